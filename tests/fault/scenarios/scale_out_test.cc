// Scale-out: three replicas share 1,000 sagas (100 in flight, starts round-robin over the
// replicas, the bank workload with the per-call faults); one replica is SIGKILLed when
// 40% of the sagas were started and not restarted. Pass: each saga is run by exactly one
// replica at a time - every event written by the holder of the fence current at insert, and
// every participant call made by the replica that owned the saga at that instant (callers are
// identified by their TCP ports) - nothing is lost and the survivors finish the dead replica's
// sagas; I1-I8. Sizes: SAGA_FAULT_SCALE_{SAGAS,IN_FLIGHT,LEASE}.
#include <signal.h>

#include <pqxx/pqxx>

#include "tests/fault/scenarios/common.h"

namespace saga::fault {
namespace {

TEST(FaultScenario, ScaleOut) {
  Scenario scenario("scale_out");
  const bool quick = QuickMode();
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_SCALE_SAGAS", quick ? 200 : 1000));
  const int in_flight = static_cast<int>(EnvInt("SAGA_FAULT_SCALE_IN_FLIGHT", quick ? 50 : 100));
  const std::string lease = EnvString("SAGA_FAULT_SCALE_LEASE", "4s");
  ASSERT_TRUE(scenario.StartDatabase().ok());
  ASSERT_TRUE(scenario.StartBank(ChaosFaults(scenario.seed()), false).ok());
  std::vector<SagadProcess*> replicas;
  for (int i = 1; i <= 3; ++i) {
    SagadOptions o = scenario.SagadDefaults(absl::StrCat("scale-", i));
    o.lease = lease;
    absl::StatusOr<SagadProcess*> p = scenario.Spawn(o);
    ASSERT_TRUE(p.ok()) << p.status();
    replicas.push_back(*p);
    if (i == 1) {
      ASSERT_TRUE(scenario.InstallAudit().ok());
    }
  }
  DriverOptions dopts;
  for (auto* r : replicas) dopts.addresses.push_back(r->address());
  dopts.db_url = scenario.DbUrl();
  dopts.in_flight = in_flight;
  Driver driver(
      dopts,
      MakeWorkload(
          {.seed = scenario.seed(), .sagas = sagas, .key_prefix = "scale", .hang_share = 0.04}));
  const absl::Time start = absl::Now();
  driver.Start();
  WaitUntil([&] { return driver.acked() >= sagas * 4 / 10; }, absl::Seconds(300));
  SagadProcess* victim = replicas[1];
  victim->Signal(SIGKILL);
  victim->WaitExit(absl::Seconds(10));
  const absl::Time killed = absl::Now();
  scenario.Forget(victim);

  EXPECT_TRUE(driver.WaitAllStarted(absl::Seconds(300)));
  EXPECT_TRUE(driver.WaitAllTerminal(absl::Seconds(300)))
      << driver.terminal() << " of " << driver.acked() << " ended";
  const absl::Duration took = absl::Now() - start;
  driver.Stop();
  for (auto* r : {replicas[0], replicas[2]}) r->Signal(SIGTERM);
  for (auto* r : {replicas[0], replicas[2]}) EXPECT_TRUE(r->WaitExit(absl::Seconds(30)));

  // Who did what, from the audit.
  std::map<std::string, int64_t> created_by, ended_by;
  int64_t orphans = 0, orphans_finished_by_others = 0;
  try {
    pqxx::connection conn(scenario.DbUrl());
    pqxx::nontransaction txn(conn);
    for (const auto& row : txn.exec("SELECT writer, count(*) FROM fault_owner_audit WHERE fence = 1"
                                    " AND owner IS NOT NULL GROUP BY writer")) {
      created_by[row[0].as<std::string>()] = row[1].as<int64_t>();
    }
    for (const auto& row : txn.exec(
             "SELECT a.writer, count(*) FROM fault_event_audit a JOIN sagas s ON s.id = a.saga_id"
             " WHERE a.seq = s.last_seq GROUP BY a.writer")) {
      ended_by[row[0].as<std::string>()] = row[1].as<int64_t>();
    }
    // Sagas scale-2 held when it died, and how many of them the others brought to an end.
    const pqxx::row row = txn.exec_params1(
        "WITH held AS ("
        "  SELECT s.id, s.status, s.last_seq FROM sagas s"
        "  WHERE (SELECT a.owner FROM fault_owner_audit a WHERE a.saga_id = s.id"
        "         AND a.at <= to_timestamp($1::double precision / 1e6)"
        "         ORDER BY a.id DESC LIMIT 1) = 'scale-2')"
        " SELECT count(*), count(*) FILTER (WHERE h.status IN ('COMPLETED', 'COMPENSATED')"
        "   AND e.writer <> 'scale-2')"
        " FROM held h JOIN fault_event_audit e ON e.saga_id = h.id AND e.seq = h.last_seq",
        absl::ToUnixMicros(killed));
    orphans = row[0].as<int64_t>();
    orphans_finished_by_others = row[1].as<int64_t>();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  auto join = [](const std::map<std::string, int64_t>& m) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : m) parts.push_back(absl::StrCat(k, " ", v));
    return absl::StrJoin(parts, ", ");
  };
  CheckOptions options;
  options.heal_time = killed;
  options.port_owner = scenario.PortOwners();
  const Figures figures = {
      {"replicas / sagas / in flight", absl::StrCat("3 / ", sagas, " / ", in_flight)},
      {"scale-2 SIGKILLed after", absl::StrCat(sagas * 4 / 10, " starts")},
      {"sagas created by", join(created_by)},
      {"sagas ended by", join(ended_by)},
      {"scale-2's unfinished sagas / finished by the others",
       absl::StrCat(orphans, " / ", orphans_finished_by_others)},
      {"run time", Seconds(took)},
  };
  CheckReport report = CheckAndReport(scenario, driver.Records(), options, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_EQ(driver.acked(), sagas);
  EXPECT_EQ(orphans, orphans_finished_by_others);
  EXPECT_EQ(report.numbers["calls by a replica not owning the saga"], 0);
}

}  // namespace
}  // namespace saga::fault
