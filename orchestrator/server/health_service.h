// HealthService: the gRPC health checking protocol (grpc.health.v1.Health, Check and Watch;
// https://github.com/grpc/grpc/blob/master/doc/health-checking.md) on the completion-queue API.
// It replaces gRPC's built-in service (grpc::EnableDefaultHealthCheckService), whose 1.51
// implementation runs on the callback API's threads.
//
// Statuses: the overall service "" and every name given to SetServiceNames are known; each is
// SERVING after SetServing(true) and NOT_SERVING otherwise. The service starts NOT_SERVING, so
// that nothing is reported healthy before the server says it is ready (gRPC's built-in service
// starts "" as SERVING; sagad calls SetServing(true) once it serves).
//   - Check(known) answers SERVING or NOT_SERVING; Check(unknown) fails with NOT_FOUND.
//   - Watch(name) sends the current status at once (SERVICE_UNKNOWN for an unknown name, and
//     the stream stays open), then the new status after each change. At most one write is in
//     flight per stream; changes made meanwhile are coalesced into the latest status. The
//     stream ends when the client cancels it or Shutdown() is called.
//
// Use: Register before the server is built, Start after BuildAndStart, Shutdown before the
// server's Shutdown (required: see Shutdown). The queue's events must be run by a
// saga::rpc::CqRunner, and the service must outlive it: destroy it only after the queue has been
// shut down and drained.
//
// Thread-safety: SetServing, SetServiceNames and Shutdown may be called from any thread (but
// Shutdown not from one of the queue's), concurrently with the calls being served.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace grpc {
class ServerBuilder;
class ServerCompletionQueue;
}  // namespace grpc

namespace saga::server {

class HealthService {
 public:
  HealthService();
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;
  ~HealthService();

  // Before the server is built.
  void Register(grpc::ServerBuilder& builder);
  // After BuildAndStart: accepts calls on `cq`, a completion queue of the server (from
  // ServerBuilder::AddCompletionQueue). Once only.
  void Start(grpc::ServerCompletionQueue* cq);

  // Sets the status of "" and of every name given to SetServiceNames; watchers are sent the new
  // status if it changed. Ignored after Shutdown.
  void SetServing(bool serving);
  // Replaces the set of known service names (besides ""), e.g. "saga.v1.SagaOrchestrator".
  // Watchers of names that become known or unknown are sent their new status.
  void SetServiceNames(std::vector<std::string> names);

  // Required before the server's Shutdown (the server's queue must not be shut down before it
  // has returned). Every status becomes NOT_SERVING for good (as with gRPC's built-in service);
  // each Watch stream is sent its final status (NOT_SERVING, or SERVICE_UNKNOWN for an unknown
  // name) and ends with OK, so that the server's Shutdown does not wait for it. Blocks until
  // every stream has ended: up to a second, after which the streams still open (a client that
  // stopped reading) are cancelled. From then on the service starts no operation on the queue:
  // calls that arrive later are cancelled, and the server's Shutdown fails the calls requested.
  // Not from a thread of the queue. Idempotent.
  void Shutdown();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace saga::server
