// Kill -9 chaos (T1): the bank workload (1,000 sagas x 5 steps, 100 in flight; ~60% complete,
// ~30% fail at a random step and compensate, ~10% also meet transient compensation failures)
// against a participant that injects per call 5% UNAVAILABLE, 3% apply-then-drop, 1% late apply
// (and 5% slow replies), while sagad is SIGKILLed 10 times at uniform(5, 20) s intervals - 3 of
// them at crash points, where sagad kills itself - and restarted after uniform(0, 2) s under a
// new owner id; PostgreSQL is restarted once in immediate mode (down uniform(0, 5) s) and
// sagad's backends are terminated once. Pass: I1-I8.
//
// The participant runs as a process of its own; PostgreSQL is the scenario's own cluster.
// Sizes: SAGA_FAULT_CHAOS_{SAGAS,IN_FLIGHT,KILLS,CRASHPOINT_KILLS,KILL_MIN_S,KILL_MAX_S,LEASE}.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <random>

#include <pqxx/pqxx>

#include "tests/fault/scenarios/common.h"
#include "tests/support/net.h"

namespace saga::fault {
namespace {

constexpr const char* kCrashPoints[] = {"after_answer_before_commit", "after_commit_before_call",
                                        "before_commit"};

TEST(FaultScenario, KillNineChaos) {
  Scenario scenario("kill9_chaos");
  const bool quick = QuickMode();
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_CHAOS_SAGAS", quick ? 200 : 1000));
  const int in_flight = static_cast<int>(EnvInt("SAGA_FAULT_CHAOS_IN_FLIGHT", quick ? 50 : 100));
  const int kills = static_cast<int>(EnvInt("SAGA_FAULT_CHAOS_KILLS", quick ? 3 : 10));
  const int crash_kills = std::min<int>(
      kills, static_cast<int>(EnvInt("SAGA_FAULT_CHAOS_CRASHPOINT_KILLS", quick ? 1 : 3)));
  const double kill_min = EnvDouble("SAGA_FAULT_CHAOS_KILL_MIN_S", 5);
  const double kill_max = EnvDouble("SAGA_FAULT_CHAOS_KILL_MAX_S", quick ? 8 : 20);
  const std::string lease = EnvString("SAGA_FAULT_CHAOS_LEASE", "4s");

  // The fault plan, from the seed.
  std::mt19937_64 rng(Mix(scenario.seed(), "chaos-plan", 0));
  std::vector<double> interval(static_cast<size_t>(kills)),
      restart_delay(static_cast<size_t>(kills));
  for (int k = 0; k < kills; ++k) {
    interval[static_cast<size_t>(k)] =
        std::uniform_real_distribution<double>(kill_min, kill_max)(rng);
    restart_delay[static_cast<size_t>(k)] = std::uniform_real_distribution<double>(0, 2)(rng);
  }
  std::vector<int> order(static_cast<size_t>(kills));
  for (int k = 0; k < kills; ++k) order[static_cast<size_t>(k)] = k;
  std::shuffle(order.begin(), order.end(), rng);
  std::map<int, std::string> armed;  // process index -> SAGA_CRASHPOINT
  for (int j = 0; j < crash_kills; ++j) {
    armed[order[static_cast<size_t>(j)]] =
        absl::StrCat(kCrashPoints[j % 3], ":", std::uniform_int_distribution<int>(5, 120)(rng));
  }
  const int pg_restart_at = kills / 2;  // after the restart that follows kill #pg_restart_at
  const double pg_down = std::uniform_real_distribution<double>(0, 5)(rng);
  const int terminate_at = std::max(0, kills / 2 - 2);
  double planned = 0;
  for (double d : interval) planned += d;

  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults = ChaosFaults(scenario.seed());
  faults.set_base_delay_ms(20);
  ASSERT_TRUE(scenario.StartBank(faults, /*as_process=*/true).ok());

  const int port = testing::FreeLoopbackPort();
  auto options_for = [&](int index) {
    SagadOptions o = scenario.SagadDefaults(absl::StrCat("chaos-", index));
    o.port = port;
    o.lease = lease;
    if (auto it = armed.find(index); it != armed.end()) o.crashpoint = it->second;
    return o;
  };
  absl::StatusOr<SagadProcess*> current = scenario.Spawn(options_for(0));
  ASSERT_TRUE(current.ok()) << current.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());

  DriverOptions dopts;
  dopts.addresses = {absl::StrCat("127.0.0.1:", port)};
  dopts.db_url = scenario.DbUrl();
  dopts.in_flight = in_flight;
  // Spread the starts over the kill schedule so that every kill meets sagas in flight.
  dopts.start_rate = sagas / std::max(1.0, 0.8 * planned);
  Driver driver(
      dopts,
      MakeWorkload(
          {.seed = scenario.seed(), .sagas = sagas, .key_prefix = "chaos", .hang_share = 0.04}));
  const absl::Time run_start = absl::Now();
  driver.Start();

  int test_kills = 0, crashpoint_kills = 0, restarts = 0, unreached = 0, unexpected_exits = 0;
  int backends_terminated = 0;
  std::vector<absl::Time> kill_times;
  std::vector<std::string> events;
  SagadProcess* proc = *current;
  for (int k = 0; k < kills; ++k) {
    const absl::Time due = absl::Now() + absl::Seconds(interval[static_cast<size_t>(k)]);
    const bool is_armed = armed.contains(k);
    // Wait for the scheduled kill (or for the armed process to hit its crash point).
    while (absl::Now() < due && proc->alive()) absl::SleepFor(absl::Milliseconds(20));
    if (is_armed && proc->alive()) {
      WaitUntil([&] { return !proc->alive(); }, absl::Seconds(10));
    }
    int status = 0;
    if (proc->alive()) {
      proc->Signal(SIGKILL);
      proc->WaitExit(absl::Seconds(10), &status);
      ++test_kills;
      if (is_armed) ++unreached;
      events.push_back(absl::StrCat("SIGKILL ", proc->options().owner_id,
                                    is_armed ? " (crash point not reached)" : ""));
    } else {
      proc->WaitExit(absl::Seconds(1), &status);
      const bool self_killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL &&
                               proc->CountLogLines("crash point reached") > 0;
      if (is_armed && self_killed) {
        ++crashpoint_kills;
        events.push_back(absl::StrCat(proc->options().owner_id, " killed itself at ",
                                      proc->options().crashpoint));
      } else {
        ++unexpected_exits;
        ADD_FAILURE() << proc->options().owner_id << " exited by itself (status " << status
                      << "); log " << proc->options().log_path;
      }
    }
    kill_times.push_back(absl::Now());
    scenario.Forget(proc);
    absl::SleepFor(absl::Seconds(restart_delay[static_cast<size_t>(k)]));
    current = scenario.Spawn(options_for(k + 1));
    ASSERT_TRUE(current.ok()) << current.status();
    proc = *current;
    ++restarts;
    if (k == terminate_at) {
      try {
        pqxx::connection conn(scenario.DbUrl());
        pqxx::nontransaction txn(conn);
        backends_terminated = txn.exec1(
                                     "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                     " WHERE application_name LIKE 'chaos-%'")[0]
                                  .as<int>();
        events.push_back(absl::StrCat("terminated ", backends_terminated, " backends"));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "pg_terminate_backend: " << e.what();
      }
    }
    if (k == pg_restart_at) {
      ASSERT_TRUE(scenario.db().Stop("immediate").ok());
      absl::SleepFor(absl::Seconds(pg_down));
      ASSERT_TRUE(scenario.db().Start().ok());
      events.push_back(absl::StrFormat("PostgreSQL restarted (immediate, down %.1f s)", pg_down));
    }
  }
  const absl::Time heal = absl::Now();
  std::cout << "chaos: " << absl::StrJoin(events, "; ") << std::endl;

  EXPECT_TRUE(driver.WaitAllStarted(absl::Seconds(120))) << "acked " << driver.acked();
  EXPECT_TRUE(driver.WaitAllTerminal(heal + absl::Seconds(90) - absl::Now()))
      << driver.terminal() << " of " << driver.acked() << " ended";
  const absl::Duration took = absl::Now() - run_start;
  driver.Stop();
  // Let the last replica settle, then stop it gracefully (nothing may change while we check).
  proc->Signal(SIGTERM);
  EXPECT_TRUE(proc->WaitExit(absl::Seconds(30)));

  // How long after each kill the next replica first claimed a saga of the dead one.
  double worst_resume = 0;
  try {
    pqxx::connection conn(scenario.DbUrl());
    pqxx::nontransaction txn(conn);
    for (int k = 0; k < static_cast<int>(kill_times.size()); ++k) {
      const pqxx::row row = txn.exec_params1(
          "SELECT coalesce(extract(epoch FROM min(at)) * 1000000, 0)::bigint"
          " FROM fault_owner_audit WHERE owner = $1 AND fence > 1",
          absl::StrCat("chaos-", k + 1));
      const int64_t first_claim = row[0].as<int64_t>();
      if (first_claim > 0) {
        worst_resume =
            std::max(worst_resume,
                     static_cast<double>(first_claim -
                                         absl::ToUnixMicros(kill_times[static_cast<size_t>(k)])) /
                         1e6);
      }
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }

  std::vector<std::string> errors;
  for (const auto& [code, n] : driver.Errors()) errors.push_back(absl::StrCat(code, " ", n));
  CheckOptions options;
  options.heal_time = heal;
  options.port_owner = scenario.PortOwners();
  const Figures figures = {
      {"sagas started / in flight", absl::StrCat(sagas, " / ", in_flight)},
      {"sagad kills (SIGKILL by the test + at crash points)",
       absl::StrCat(test_kills + crashpoint_kills, " (", test_kills, " + ", crashpoint_kills, ")")},
      {"crash points armed but not reached", absl::StrCat(unreached)},
      {"sagad restarts", absl::StrCat(restarts)},
      {"PostgreSQL immediate restarts", "1"},
      {"backends terminated", absl::StrCat(backends_terminated)},
      {"lease", lease},
      {"worst first claim after a kill", absl::StrFormat("%.2f s", worst_resume)},
      {"StartSaga attempts failed", errors.empty() ? "none" : absl::StrJoin(errors, ", ")},
      {"run time", Seconds(took)},
  };
  CheckReport report = CheckAndReport(scenario, driver.Records(), options, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_EQ(driver.acked(), sagas);
  EXPECT_EQ(unexpected_exits, 0);
  // Recovery needs the dead replica's leases to expire: lease + restart delay + claim poll.
  absl::Duration lease_d;
  ASSERT_TRUE(absl::ParseDuration(lease, &lease_d));
  EXPECT_LE(worst_resume, absl::ToDoubleSeconds(lease_d) + 2 + 5);
}

}  // namespace
}  // namespace saga::fault
