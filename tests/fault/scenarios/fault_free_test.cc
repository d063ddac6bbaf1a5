// Fault-free baseline: the invariants must hold when nothing breaks (Jepsen found anomalies on
// healthy nodes). One replica, the bank workload with scripted business failures and
// transient compensation failures, no injected faults.
#include <signal.h>

#include <pqxx/pqxx>

#include "tests/fault/scenarios/common.h"

namespace saga::fault {
namespace {

TEST(FaultScenario, FaultFree) {
  Scenario scenario("fault_free");
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_FREE_SAGAS", QuickMode() ? 100 : 300));
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, /*as_process=*/false).ok());
  absl::StatusOr<SagadProcess*> sagad = scenario.Spawn(scenario.SagadDefaults("free-1"));
  ASSERT_TRUE(sagad.ok()) << sagad.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());

  Driver driver({.addresses = {(*sagad)->address()}, .db_url = scenario.DbUrl(), .in_flight = 50},
                MakeWorkload({.seed = scenario.seed(), .sagas = sagas, .key_prefix = "free"}));
  const absl::Time start = absl::Now();
  driver.Start();
  EXPECT_TRUE(driver.WaitAllStarted(absl::Seconds(120)));
  EXPECT_TRUE(driver.WaitAllTerminal(absl::Seconds(120)));
  const absl::Duration took = absl::Now() - start;
  driver.Stop();

  CheckOptions options;
  options.port_owner = scenario.PortOwners();
  CheckReport report = CheckAndReport(
      scenario, driver.Records(), options,
      {{"sagas started", absl::StrCat(sagas)},
       {"run time", Seconds(took)},
       {"throughput (sagas/s)", absl::StrFormat("%.1f", sagas / absl::ToDoubleSeconds(took))}},
      kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_EQ(driver.acked(), sagas);
  (*sagad)->Signal(SIGTERM);
  EXPECT_TRUE((*sagad)->WaitExit(absl::Seconds(30)));

  // The same check through the CLI, as an operator would run it.
  const CommandResult cli = RunCommand(
      {SAGA_FAULT_CHECK_PATH, "--db", scenario.DbUrl(), "--participant", scenario.bank_address(),
       "--acks", scenario.dir() + "/acks.jsonl", "--seed", absl::StrCat(scenario.seed())},
      absl::Seconds(60));
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  EXPECT_NE(cli.output.find("I8 ok"), std::string::npos) << cli.output;

  // Negative control: tamper with the finished run, one invariant at a time, and make sure the
  // checker notices each. (A checker that never fails proves nothing.)
  absl::StatusOr<BankDump> dump = scenario.BankDumpNow();
  ASSERT_TRUE(dump.ok());
  std::vector<std::string> completed, compensated;
  std::string compensated_with_undo;
  try {
    pqxx::connection conn(scenario.DbUrl());
    pqxx::nontransaction txn(conn);
    for (const auto& row : txn.exec("SELECT id::text, status FROM sagas ORDER BY id")) {
      (row[1].as<std::string>() == "COMPLETED" ? completed : compensated)
          .push_back(row[0].as<std::string>());
    }
    compensated_with_undo =
        txn.exec1(
               "SELECT saga_id::text FROM saga_events WHERE type = 7 ORDER BY saga_id LIMIT 1")[0]
            .as<std::string>();
    ASSERT_GE(completed.size(), 4u);
    // I2: a saga that never ends.
    txn.exec("UPDATE sagas SET status = 'RUNNING' WHERE id = '" + completed[0] + "'");
    // I3: a gap in a history.
    txn.exec("DELETE FROM saga_events WHERE saga_id = '" + completed[1] + "' AND seq = 3");
    // I8: an event written by a replica that did not hold the fence.
    txn.exec("UPDATE fault_event_audit SET writer = 'intruder' WHERE saga_id = '" + completed[2] +
             "' AND seq = 4");
  } catch (const std::exception& e) {
    FAIL() << e.what();
  }
  BankDump tampered = *dump;
  for (auto& e : tampered.entries) {
    // I4: an effect applied twice (the same entry again).
    if (e.saga_id() == completed[3] && e.applied() && e.step() == "credit") {
      tampered.entries.push_back(e);
      break;
    }
  }
  for (auto it = tampered.entries.begin(); it != tampered.entries.end(); ++it) {
    // I5: a compensation that never happened.
    if (it->saga_id() == compensated_with_undo && it->compensation() && it->applied()) {
      tampered.entries.erase(it);
      break;
    }
  }
  {
    // I7: a compensation called in a COMPLETED saga.
    bank::v1::LedgerEntry e;
    e.set_saga_id(completed[3]);
    e.set_body_transfer_id(completed[3]);
    e.set_step("fee");
    e.set_body_step("fee");
    e.set_compensation(true);
    e.set_idempotency_key(completed[3] + "/fee/compensation");
    e.set_method("RevertFee");
    e.set_outcome("UNAVAILABLE");
    tampered.entries.push_back(e);
  }
  // I6: money out of thin air.
  tampered.snapshot.mutable_accounts(0)->set_balance(tampered.snapshot.accounts(0).balance() + 1);
  tampered.snapshot.set_total(tampered.snapshot.total() + 1);
  CheckOptions bad;
  bad.db_url = scenario.DbUrl();
  bad.banks = {tampered};
  bad.have_acks = true;
  for (const auto& r : driver.Records()) bad.acks.push_back(Ack{r.key, r.saga_id, r.ids_seen});
  bad.acks.push_back(Ack{"free-never-started",
                         "00000000-0000-4000-8000-000000000000",
                         {"00000000-0000-4000-8000-000000000000"}});  // I1
  absl::StatusOr<CheckReport> caught = CheckRun(bad);
  ASSERT_TRUE(caught.ok()) << caught.status();
  std::cout << "negative control: " << caught->InvariantSummary(kAllInvariants) << std::endl;
  for (const auto& inv : kAllInvariants) {
    EXPECT_GT(caught->violations[inv], 0) << "the checker missed a tampered " << inv;
  }
}

}  // namespace
}  // namespace saga::fault
