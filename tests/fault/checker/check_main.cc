// saga-fault-check: checks a finished fault run's invariants I1-I8 and prints its figures.
//
//   saga-fault-check --db postgresql://postgres@127.0.0.1:5432/sagas
//       --participant 127.0.0.1:40001 [--acks acks.jsonl] [--heal-unix-us N] [--seed S]
//   saga-fault-check --db URL --install-audit     (before the run: the I8 writer audit)
//
// --acks: one JSON object per line, {"key": "...", "saga_id": "...", "ids": ["..."]}, as the
// scenarios write them to $SAGA_FAULT_ARTIFACTS. Exit status: 0 all invariants hold, 1 a
// violation, 2 a usage or connection error.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "nlohmann/json.hpp"
#include "tests/fault/checker/checker.h"

int main(int argc, char** argv) {
  CLI::App app{"Checks the invariants I1-I8 of a fault run and prints its figures.",
               "saga-fault-check"};
  std::string db, acks_path, definition = "bank-transfer";
  std::vector<std::string> participants;
  int64_t heal_us = 0, initial_balance = 1000000000;
  uint64_t seed = 0;
  int bound_s = 60;
  bool install = false, allow_failed = false;
  app.add_option("--db", db, "PostgreSQL URI of the run's database")->required();
  app.add_option("--participant", participants, "bank participant address (repeatable)");
  app.add_option("--acks", acks_path, "acknowledged starts, JSON lines");
  app.add_option("--definition", definition)->capture_default_str();
  app.add_option("--heal-unix-us", heal_us, "when the last fault healed (Unix microseconds)");
  app.add_option("--terminal-bound-s", bound_s, "I2 bound after healing")->capture_default_str();
  app.add_option("--initial-balance", initial_balance)->capture_default_str();
  app.add_option("--seed", seed, "printed with the figures");
  app.add_flag("--install-audit", install, "install the audit triggers and exit");
  app.add_flag("--allow-failed", allow_failed, "FAILED sagas are expected");
  CLI11_PARSE(app, argc, argv);

  if (install) {
    absl::Status s = saga::fault::InstallAudit(db);
    if (!s.ok()) {
      std::cerr << "saga-fault-check: " << s.message() << "\n";
      return 2;
    }
    std::cout << "audit triggers installed\n";
    return 0;
  }
  saga::fault::CheckOptions options;
  options.db_url = db;
  options.definition = definition;
  options.initial_balance = initial_balance;
  options.allow_failed = allow_failed;
  options.terminal_bound = absl::Seconds(bound_s);
  if (heal_us > 0) options.heal_time = absl::FromUnixMicros(heal_us);
  for (const auto& p : participants) {
    absl::StatusOr<saga::fault::BankDump> dump = saga::fault::FetchBankDump(p);
    if (!dump.ok()) {
      std::cerr << "saga-fault-check: " << dump.status().message() << "\n";
      return 2;
    }
    options.banks.push_back(*std::move(dump));
  }
  if (!acks_path.empty()) {
    std::ifstream in(acks_path);
    if (!in) {
      std::cerr << "saga-fault-check: cannot read " << acks_path << "\n";
      return 2;
    }
    options.have_acks = true;
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object()) continue;
      saga::fault::Ack a;
      a.key = j.value("key", "");
      a.saga_id = j.value("saga_id", "");
      if (j.contains("ids")) {
        for (const auto& id : j["ids"]) a.ids_seen.insert(id.get<std::string>());
      }
      options.acks.push_back(std::move(a));
    }
  }
  absl::StatusOr<saga::fault::CheckReport> report = saga::fault::CheckRun(options);
  if (!report.ok()) {
    std::cerr << "saga-fault-check: " << report.status().message() << "\n";
    return 2;
  }
  std::vector<std::pair<std::string, std::string>> figures = {{"seed", std::to_string(seed)}};
  figures.insert(figures.end(), report->figures.begin(), report->figures.end());
  std::cout << saga::fault::FiguresTable(figures) << "\n";
  const std::vector<std::string> all = {"I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8"};
  std::cout << report->InvariantSummary(all) << "\n";
  return report->Passed(all) ? 0 : 1;
}
