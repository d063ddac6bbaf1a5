// Scenario: the scaffolding every fault scenario shares. It owns a work directory, a
// PostgreSQL cluster of its own (PgCluster), the bank participant (in this process, or as the
// `bank-participant` process), the generated definitions folder, the sagad replicas
// (SagadProcess), a sampler that maps each replica's TCP ports to its owner id (to attribute
// participant calls), and the final check and report.
//
// Knobs (environment): SAGA_FAULT_SEED (reproduce a run), SAGA_FAULT_QUICK=1 (small sizes),
// SAGA_FAULT_KEEP=1 (keep the work directory: logs, acks, figures), SAGA_FAULT_REPORT=<file>
// (append each scenario's figures as markdown).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/fault/bank/bank_server.h"
#include "tests/fault/checker/checker.h"
#include "tests/fault/harness/driver.h"
#include "tests/fault/harness/pg_cluster.h"
#include "tests/fault/harness/sagad_process.h"
#include "tests/fault/harness/workload.h"

namespace saga::fault {

// The bank participant as a process of its own.
class BankProcess {
 public:
  static absl::StatusOr<std::unique_ptr<BankProcess>> Spawn(const bank::v1::FaultConfig& faults,
                                                            const std::string& log_path);
  ~BankProcess();
  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
};

class Scenario {
 public:
  // `name` names the work directory and the report section.
  explicit Scenario(std::string name);
  ~Scenario();

  uint64_t seed() const { return seed_; }
  const std::string& dir() const { return dir_; }
  const std::string& name() const { return name_; }

  absl::Status StartDatabase();
  PgCluster& db() { return *db_; }
  // The URL the harness itself uses (application_name "saga-fault").
  std::string DbUrl() const;

  // Starts the bank participant (in this process or as a process) with `faults`, and writes the
  // definitions folder for it.
  absl::Status StartBank(const bank::v1::FaultConfig& faults, bool as_process,
                         DefinitionOptions definition = {});
  std::string bank_address() const;
  // The participant's ledger and final state.
  absl::StatusOr<BankDump> BankDumpNow() const;
  BankServer* bank_server() { return bank_.get(); }
  int64_t BankInFlight() const;

  // Options for a replica: the work dir's definitions and log, the cluster's URL.
  SagadOptions SagadDefaults(const std::string& owner_id) const;
  // Spawns a replica (waits until SERVING); it is tracked by the port sampler.
  absl::StatusOr<SagadProcess*> Spawn(const SagadOptions& options);
  // Forgets a dead replica (keeps its ports in the map).
  void Forget(SagadProcess* process);
  std::map<int, std::string> PortOwners() const;

  // Installs the audit triggers (after the first replica migrated the schema).
  absl::Status InstallAudit();

  // Runs the checker with the driver's acknowledged starts and the participant's ledger.
  absl::StatusOr<CheckReport> Check(const std::vector<StartRecord>& records, CheckOptions options);

  // Prints the figures table and invariant summary, and appends them to SAGA_FAULT_REPORT.
  void Report(const std::vector<std::pair<std::string, std::string>>& scenario_figures,
              const CheckReport& report, const std::vector<std::string>& invariants);
  // Writes the acknowledged starts as JSON lines (for saga-fault-check --acks).
  void WriteAcks(const std::vector<StartRecord>& records) const;

  // Marks the scenario failed: the work dir is kept.
  void KeepOnExit() { keep_ = true; }

 private:
  void SampleLoop();

  const std::string name_;
  const uint64_t seed_;
  std::string dir_;
  bool keep_ = false;
  std::unique_ptr<PgCluster> db_;
  std::unique_ptr<BankServer> bank_;
  std::unique_ptr<BankProcess> bank_process_;
  std::vector<std::unique_ptr<SagadProcess>> sagads_;
  mutable std::mutex mu_;
  std::vector<std::pair<pid_t, std::string>> live_;  // sampled
  std::map<int, std::string> port_owner_;
  std::atomic<bool> stop_{false};
  std::thread sampler_;
};

}  // namespace saga::fault
