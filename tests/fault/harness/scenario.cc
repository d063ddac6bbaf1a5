#include "tests/fault/harness/scenario.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "tests/fault/harness/util.h"

namespace saga::fault {
namespace {

std::string BankBinary() {
#ifdef BANK_PARTICIPANT_PATH
  return EnvString("SAGA_FAULT_BANK", BANK_PARTICIPANT_PATH);
#else
  return EnvString("SAGA_FAULT_BANK", "bank-participant");
#endif
}

std::string ProtoDir() {
#ifdef SAGA_FAULT_PROTO_DIR
  return SAGA_FAULT_PROTO_DIR;
#else
  return "tests/fault/proto";
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<BankProcess>> BankProcess::Spawn(const bank::v1::FaultConfig& f,
                                                                const std::string& log_path) {
  const std::pair<const char*, std::string> flags[] = {
      {"--seed", absl::StrCat(f.seed())},
      {"--unavailable", absl::StrCat(f.unavailable())},
      {"--drop-reply", absl::StrCat(f.drop_reply())},
      {"--late-apply", absl::StrCat(f.late_apply())},
      {"--slow", absl::StrCat(f.slow())},
      {"--hold-ms", absl::StrCat(f.hold_ms())},
      {"--slow-max-ms", absl::StrCat(f.slow_max_ms())},
      {"--base-delay-ms", absl::StrCat(f.base_delay_ms())},
  };
  std::vector<std::string> argv = {BankBinary()};
  for (const auto& [flag, value] : flags) {
    argv.push_back(flag);
    argv.push_back(value);
  }
  int out[2];
  if (pipe(out) != 0) return absl::InternalError("pipe");
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) dup2(fd, 2);
    close(out[0]);
    close(out[1]);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  auto p = std::unique_ptr<BankProcess>(new BankProcess());
  p->pid_ = pid;
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  std::string text;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  char buf[256];
  while (absl::Now() < deadline && text.find('\n') == std::string::npos) {
    const ssize_t n = read(out[0], buf, sizeof(buf));
    if (n > 0) text.append(buf, static_cast<size_t>(n));
    absl::SleepFor(absl::Milliseconds(10));
  }
  close(out[0]);
  const std::string prefix = "listening on ";
  const auto at = text.find(prefix);
  if (at == std::string::npos) {
    return absl::UnavailableError(absl::StrCat("bank-participant did not start: '", text, "'"));
  }
  p->address_ = text.substr(at + prefix.size());
  p->address_ = p->address_.substr(0, p->address_.find('\n'));
  return p;
}

BankProcess::~BankProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 300; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      absl::SleepFor(absl::Milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

Scenario::Scenario(std::string name) : name_(std::move(name)), seed_(ScenarioSeed()) {
  absl::StatusOr<std::string> dir = MakeTempDir(absl::StrCat("saga-fault-", name_));
  dir_ = dir.ok() ? *dir : "/tmp";
  std::filesystem::create_directories(dir_ + "/defs");
  std::cout << "== fault scenario " << name_ << ": seed " << seed_ << " (reproduce with "
            << "SAGA_FAULT_SEED=" << seed_ << "), work dir " << dir_ << std::endl;
  sampler_ = std::thread([this] { SampleLoop(); });
}

Scenario::~Scenario() {
  stop_ = true;
  if (sampler_.joinable()) sampler_.join();
  sagads_.clear();
  bank_process_.reset();
  if (bank_) bank_->Shutdown();
  bank_.reset();
  db_.reset();
  if (keep_ || EnvInt("SAGA_FAULT_KEEP", 0) != 0) {
    std::cout << "== fault scenario " << name_ << ": kept " << dir_ << std::endl;
  } else {
    RemoveTree(dir_);
  }
}

absl::Status Scenario::StartDatabase() {
  absl::StatusOr<std::unique_ptr<PgCluster>> db = PgCluster::Create();
  if (!db.ok()) return db.status();
  db_ = *std::move(db);
  return absl::OkStatus();
}

std::string Scenario::DbUrl() const { return db_->Url("saga-fault"); }

absl::Status Scenario::StartBank(const bank::v1::FaultConfig& faults, bool as_process,
                                 DefinitionOptions definition) {
  if (as_process) {
    absl::StatusOr<std::unique_ptr<BankProcess>> p =
        BankProcess::Spawn(faults, dir_ + "/bank-participant.log");
    if (!p.ok()) return p.status();
    bank_process_ = *std::move(p);
  } else {
    BankServerOptions options;
    options.faults = faults;
    absl::StatusOr<std::unique_ptr<BankServer>> b = BankServer::Start(options);
    if (!b.ok()) return b.status();
    bank_ = *std::move(b);
  }
  definition.target = bank_address();
  std::ofstream(dir_ + "/defs/bank-transfer.yaml") << BankTransferYaml(definition);
  return absl::OkStatus();
}

std::string Scenario::bank_address() const {
  return bank_ ? bank_->address() : bank_process_ ? bank_process_->address() : "";
}

absl::StatusOr<BankDump> Scenario::BankDumpNow() const {
  if (bank_) return bank_->Dump();
  return FetchBankDump(bank_address());
}

int64_t Scenario::BankInFlight() const {
  if (bank_) return bank_->state().in_flight();
  absl::StatusOr<BankDump> d = FetchBankDump(bank_address());
  return d.ok() ? d->snapshot.in_flight() : -1;
}

SagadOptions Scenario::SagadDefaults(const std::string& owner_id) const {
  SagadOptions o;
  o.owner_id = owner_id;
  o.database_url = db_->Url("x").substr(0, db_->Url("x").find('?'));
  o.definitions_dir = dir_ + "/defs";
  o.proto_path = {ProtoDir()};
  o.log_path = absl::StrCat(dir_, "/sagad-", owner_id, ".log");
  return o;
}

absl::StatusOr<SagadProcess*> Scenario::Spawn(const SagadOptions& options) {
  absl::StatusOr<std::unique_ptr<SagadProcess>> p = SagadProcess::Spawn(options);
  if (!p.ok()) return p.status();
  SagadProcess* raw = p->get();
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_.emplace_back(raw->pid(), options.owner_id);
  }
  sagads_.push_back(*std::move(p));
  return raw;
}

void Scenario::Forget(SagadProcess* process) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(live_, [&](const auto& e) { return e.first == process->pid(); });
}

std::map<int, std::string> Scenario::PortOwners() const {
  std::lock_guard<std::mutex> lock(mu_);
  return port_owner_;
}

void Scenario::SampleLoop() {
  while (!stop_) {
    std::vector<std::pair<pid_t, std::string>> live;
    {
      std::lock_guard<std::mutex> lock(mu_);
      live = live_;
    }
    for (const auto& [pid, owner] : live) {
      std::set<int> ports = LocalTcpPorts(pid);
      std::lock_guard<std::mutex> lock(mu_);
      for (int port : ports) port_owner_[port] = owner;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::Status Scenario::InstallAudit() { return saga::fault::InstallAudit(DbUrl()); }

absl::StatusOr<CheckReport> Scenario::Check(const std::vector<StartRecord>& records,
                                            CheckOptions options) {
  options.db_url = DbUrl();
  absl::StatusOr<BankDump> dump = BankDumpNow();
  if (!dump.ok()) return dump.status();
  options.banks = {*std::move(dump)};
  options.have_acks = true;
  for (const auto& r : records) {
    if (!r.acked) continue;
    options.acks.push_back(Ack{r.key, r.saga_id, r.ids_seen});
  }
  WriteAcks(records);
  return CheckRun(options);
}

void Scenario::WriteAcks(const std::vector<StartRecord>& records) const {
  std::ofstream out(dir_ + "/acks.jsonl");
  for (const auto& r : records) {
    if (!r.acked) continue;
    nlohmann::json j = {{"key", r.key}, {"saga_id", r.saga_id}, {"ids", r.ids_seen}};
    out << j.dump() << "\n";
  }
}

void Scenario::Report(const std::vector<std::pair<std::string, std::string>>& scenario_figures,
                      const CheckReport& report, const std::vector<std::string>& invariants) {
  std::vector<std::pair<std::string, std::string>> all = {{"seed", absl::StrCat(seed_)}};
  all.insert(all.end(), scenario_figures.begin(), scenario_figures.end());
  all.insert(all.end(), report.figures.begin(), report.figures.end());
  const std::string table = FiguresTable(all);
  const std::string summary = report.InvariantSummary(invariants);
  std::cout << "== fault scenario " << name_ << " figures\n" << table << summary << std::endl;
  std::ofstream(dir_ + "/figures.md") << table << "\n" << summary << "\n";
  const std::string path = EnvString("SAGA_FAULT_REPORT", "");
  if (!path.empty()) {
    std::ofstream out(path, std::ios::app);
    out << "### " << name_ << "\n\n" << table << "\n" << summary << "\n\n";
  }
  if (!report.Passed(invariants)) keep_ = true;
}

}  // namespace saga::fault
