// bank-participant: the fault suite's bank participant (bank.v1.Bank + bank.v1.BankAdmin) as a
// process of its own, so that a scenario can restart sagad and PostgreSQL without touching the
// participant's ledger. Prints "bank participant listening on <addr>" to stdout once ready and
// exits on SIGINT or SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "tests/fault/bank/bank_server.h"

int main(int argc, char** argv) {
  CLI::App app{"The fault suite's bank participant (tests/fault/proto/bank/v1/bank.proto).",
               "bank-participant"};
  saga::fault::BankServerOptions options;
  uint64_t seed = 1;
  double unavailable = 0, drop = 0, late = 0, slow = 0;
  int hold_ms = 1500, slow_max_ms = 200, base_delay_ms = 0;
  app.add_option("--listen", options.listen, "loopback host:port (port 0 picks one)")
      ->capture_default_str();
  app.add_option("--accounts", options.accounts, "customer accounts")->capture_default_str();
  app.add_option("--initial-balance", options.initial_balance)->capture_default_str();
  app.add_option("--seed", seed, "fault seed")->capture_default_str();
  app.add_option("--unavailable", unavailable, "share of deliveries answered UNAVAILABLE");
  app.add_option("--drop-reply", drop, "share of deliveries applied whose reply is held back");
  app.add_option("--late-apply", late, "share of deliveries applied after --hold-ms");
  app.add_option("--slow", slow, "share of deliveries answered after up to --slow-max-ms");
  app.add_option("--hold-ms", hold_ms, "hold of drop-reply and late-apply")->capture_default_str();
  app.add_option("--slow-max-ms", slow_max_ms)->capture_default_str();
  app.add_option("--base-delay-ms", base_delay_ms, "delay of every call")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  options.faults.set_seed(seed);
  options.faults.set_unavailable(unavailable);
  options.faults.set_drop_reply(drop);
  options.faults.set_late_apply(late);
  options.faults.set_slow(slow);
  options.faults.set_hold_ms(hold_ms);
  options.faults.set_slow_max_ms(slow_max_ms);
  options.faults.set_base_delay_ms(base_delay_ms);
  auto server = saga::fault::BankServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "bank-participant: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("bank participant listening on %s\n", (*server)->address().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  (*server)->Shutdown();
  return 0;
}
