// An in-process gRPC server for the example saga participants of the order-fulfillment saga:
// shop.v1.Inventory (Reserve/Release), shop.v1.Payment (Charge/Refund), shop.v1.Shipping
// (Schedule), and shop.v1.ShopAdmin (faults, ledger, counts, reset; see admin.proto), all on
// one port. The rules are those of ShopState (shop_state.h): idempotency by the
// `idempotency-key` metadata, empty compensation, anti-hanging, and the per-request Behavior
// faults. Delayed and held-back (drop_reply) answers are delivered by a scheduler thread, so
// gRPC's threads never block and the server stays responsive.
//
// Example:
//   ASSIGN_OR_RETURN(auto server, ShopServer::Start({}));
//   ... call server->address() with saga-id/saga-step/idempotency-key metadata ...
//   EXPECT_EQ(server->AppliedCount("shop.v1.Payment/Charge", "o-1"), 1);
//
// Thread-safe: every method may be called from any thread, also while calls are served.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "examples/participants/shop_state.h"

namespace saga::examples {

struct ShopServerOptions {
  // gRPC listen address; port 0 picks a free port (see ShopServer::port()).
  std::string listen = "localhost:0";
  // The stock every sku starts with.
  int64_t initial_stock = 1000000;
  // Also serve shop.v1.ShopAdmin on the same port.
  bool enable_admin = true;
  // How many ledger entries are kept (the oldest are dropped first; counts stay exact).
  size_t ledger_capacity = 1000000;
  // Called once per shop call when it has been decided (before a delayed reply is sent), on a
  // gRPC thread, outside any lock. Must be thread-safe and quick (e.g. log a line).
  std::function<void(const LedgerEntry&)> on_call;
};

class ShopServer {
 public:
  // Binds `options.listen` and starts serving. UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ShopServer>> Start(const ShopServerOptions& options);

  // Calls Shutdown().
  ~ShopServer();

  ShopServer(const ShopServer&) = delete;
  ShopServer& operator=(const ShopServer&) = delete;

  // The bound port.
  int port() const;
  // "localhost:<port>".
  std::string address() const;

  // Stops serving: held-back and delayed replies are sent at once, in-flight calls get at
  // most ~1 s. Idempotent; returns when the server has stopped. The ledger and state accessors
  // keep working afterwards.
  void Shutdown();

  // The newest entries (up to ShopServerOptions::ledger_capacity), oldest first.
  std::vector<LedgerEntry> Ledger() const;
  // Calls of `method` ("shop.v1.Inventory/Reserve") for the order whose effect was applied
  // (an empty compensation counts as applied once: it is recorded).
  int AppliedCount(std::string_view method, std::string_view order_id) const;
  // Every call of `method` for the order: repeats, refusals and injected faults included.
  int CallCount(std::string_view method, std::string_view order_id) const;
  // Units of `sku` in stock (reservations taken, releases put back).
  int64_t Stock(std::string_view sku) const;
  // The sum of the charges not refunded, in cents.
  int64_t ChargedTotal() const;
  // The last `traceparent` metadata seen on a call for the order ("" if none).
  std::string LastTraceparent(std::string_view order_id) const;

  // Answers every call of `method` with `code` before applying anything, until cleared
  // (kOk clears this method's fault).
  void SetMethodFault(std::string_view method, absl::StatusCode code);
  void ClearFaults();
  // Forgets everything: stock, charges, recorded keys, ledger, counts, traceparents, faults.
  void Reset();

 private:
  struct Impl;
  explicit ShopServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace saga::examples
