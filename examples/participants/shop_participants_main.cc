// shop-participants: serves the example participants of the order-fulfillment saga
// (shop.v1.Inventory, shop.v1.Payment, shop.v1.Shipping) and the shop.v1.ShopAdmin test
// service on one port. Logs one line per call to stderr (unless --quiet), prints
// "shop participants listening on <addr>" to stdout once ready, and exits cleanly on SIGINT or
// SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"
#include "examples/participants/shop_server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

int Run(int argc, char** argv) {
  CLI::App app{
      "Example saga participants: shop.v1 Inventory, Payment and Shipping, plus the ShopAdmin "
      "test service, on one gRPC port.",
      "shop-participants"};
  std::string listen = "localhost:50061";
  int64_t initial_stock = 1000000;
  bool quiet = false;
  app.add_option("--listen", listen, "gRPC listen address (host:port; port 0 picks one)")
      ->envname("SHOP_LISTEN")
      ->capture_default_str();
  app.add_option("--initial-stock", initial_stock, "stock every sku starts with")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("-q,--quiet", quiet, "do not log each call");
  CLI11_PARSE(app, argc, argv);

  // Block the stop signals in every thread (gRPC's threads inherit the mask) and wait for them
  // with sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto logger = spdlog::stderr_color_mt("shop");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  saga::examples::ShopServerOptions options;
  options.listen = listen;
  options.initial_stock = initial_stock;
  if (!quiet) {
    options.on_call = [logger](const saga::examples::LedgerEntry& entry) {
      logger->info("{} order={} key={} saga={} step={} -> {}{}{}{}", entry.method, entry.order_id,
                   entry.idempotency_key, entry.saga_id, entry.step, entry.outcome,
                   entry.message.empty() ? "" : " (" + entry.message + ")",
                   entry.applied ? " applied" : "",
                   entry.empty_compensation ? " empty-compensation" : "");
    };
  }
  auto server = saga::examples::ShopServer::Start(options);
  if (!server.ok()) {
    logger->error("{}", server.status().ToString());
    return 1;
  }
  std::printf("shop participants listening on %s\n", (*server)->address().c_str());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  logger->info("received {}, shutting down", signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown();
  logger->info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
