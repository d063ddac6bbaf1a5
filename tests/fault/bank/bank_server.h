// BankServer: the bank participant (bank.v1.Bank and bank.v1.BankAdmin) on one gRPC port,
// in-process (for fast scenarios) or inside the `bank-participant` binary (so that restarts of
// sagad never touch it). Rules and faults are BankState's (bank_state.h); delayed, held and
// late answers are delivered by a timer thread, so gRPC's callback threads never block.
//
//   ASSIGN_OR_RETURN(auto bank, BankServer::Start({.faults = faults}));
//   ... sagad calls bank->address() ...
//   BankDump dump = bank->Dump();
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bank/v1/bank.pb.h"
#include "tests/fault/bank/bank_state.h"

namespace saga::fault {

struct BankServerOptions {
  // Loopback only; port 0 picks a free port.
  std::string listen = "127.0.0.1:0";
  int accounts = 20;
  int64_t initial_balance = 1000000000;
  bank::v1::FaultConfig faults;
};

// Everything the checker needs from a participant: its ledger and final state.
struct BankDump {
  std::vector<bank::v1::LedgerEntry> entries;
  bank::v1::SnapshotReply snapshot;
};

class BankServer {
 public:
  static absl::StatusOr<std::unique_ptr<BankServer>> Start(const BankServerOptions& options);
  ~BankServer();
  BankServer(const BankServer&) = delete;
  BankServer& operator=(const BankServer&) = delete;

  int port() const;
  // "127.0.0.1:<port>".
  std::string address() const;
  BankState& state();
  BankDump Dump() const;
  // Stops serving; held answers are sent at once. Idempotent.
  void Shutdown();

 private:
  struct Impl;
  explicit BankServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Reads a (possibly remote-process) participant's ledger and snapshot through BankAdmin.
absl::StatusOr<BankDump> FetchBankDump(const std::string& address);
// Sets a participant's fault plan through BankAdmin.
absl::Status ConfigureBank(const std::string& address, const bank::v1::FaultConfig& faults);

}  // namespace saga::fault
