// saga-floor: the least time a 3-step saga with write-ahead can take on this machine, with no
// orchestrator at all. One thread does, in order, what any durable orchestrator must do for the
// order saga: write the start (with the first attempt), call Reserve, write, call Charge, write,
// call Schedule, write the end. Each write is one single-row INSERT that PostgreSQL commits on
// its own (synchronous_commit as the server has it, so one WAL flush each); each call is a
// blocking unary call to the participant server. Prints the chain's latency and the parts'.
//
// It is a yardstick for sagad's latency at one saga in flight: what is left above it is the
// orchestrator's own cost (decisions, thread hand-offs, the bigger statement).
#include <poll.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_util.h"
#include "grpcpp/grpcpp.h"
#include "libpq-fe.h"
#include "orchestrator/runtime/executor.h"
#include "participants.grpc.pb.h"
#include "pqxx/pqxx"

namespace saga::bench {
namespace {

namespace pv1 = ::sagabench::participants::v1;
using Clock = std::chrono::steady_clock;

constexpr char kWriteSql[] = "INSERT INTO saga_floor_events (saga, seq, body) VALUES ($1, $2, $3)";

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

pv1::StepRequest StepRequestFor(uint64_t order, int step) {
  pv1::StepRequest request;
  request.set_order_id(order);
  request.set_amount(100 + static_cast<int64_t>(order % 9900));
  request.set_idempotency_key(std::to_string(order) + ":" + std::to_string(step));
  return request;
}

// What sagad puts on a participant call besides the message.
void ShapeLikeSagad(grpc::ClientContext& context, uint64_t order, int step) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  context.AddMetadata("saga-id", "0192f3a4-5b6c-7d8e-9f01-" + std::to_string(100000000000 + order));
  context.AddMetadata("saga-step", step == 0 ? "reserve" : step == 1 ? "charge" : "schedule");
  context.AddMetadata("idempotency-key", std::to_string(order) + ":" + std::to_string(step));
  context.AddMetadata("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
}

int Main(int argc, char** argv) {
  std::string pg;
  std::string target = "localhost:50071";
  int sagas = 1000;
  int warmup = 100;
  CLI::App app{"saga-floor: the floor of a 3-step saga's latency on this machine"};
  app.add_option("--pg", pg, "PostgreSQL connection string (default: the PG* variables)");
  app.add_option("--target", target, "participant server (bench-participants)");
  app.add_option("--sagas", sagas, "measured sagas")->check(CLI::PositiveNumber);
  bool hand_off = false;
  int spin_us = 0;
  app.add_option(
      "--spin-us", spin_us,
      "poll PostgreSQL's socket without sleeping for up to this long per write (raw libpq)");
  app.add_flag("--hand-off", hand_off,
               "sagad's shape instead of one thread: writes on a writer thread, calls through "
               "gRPC's callback API, each step continued by the thread that finished the last");
  bool call_like_sagad = false;
  app.add_flag("--call-like-sagad", call_like_sagad,
               "send each call as sagad does: with a deadline (30 s) and sagad's four metadata "
               "entries (saga-id, saga-step, idempotency-key, traceparent)");
  app.add_option("--warmup", warmup, "sagas before measuring")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    pqxx::connection conn(pg);
    {
      pqxx::nontransaction setup(conn);
      setup.exec(
          "CREATE TABLE IF NOT EXISTS saga_floor_events "
          "(saga bigint NOT NULL, seq int NOT NULL, body text NOT NULL, PRIMARY KEY (saga, seq))");
      setup.exec("TRUNCATE saga_floor_events");
    }
    conn.prepare("floor_write", kWriteSql);
    int backend = pqxx::nontransaction(conn).exec1("SELECT pg_backend_pid()")[0].as<int>();

    // --spin-us: the writes go over a libpq connection of their own, driven asynchronously.
    std::unique_ptr<PGconn, decltype(&PQfinish)> raw_conn(nullptr, &PQfinish);
    PGconn* raw = nullptr;
    if (spin_us > 0) {
      raw_conn.reset(PQconnectdb(pg.c_str()));
      raw = raw_conn.get();
      if (PQstatus(raw) != CONNECTION_OK) throw std::runtime_error(PQerrorMessage(raw));
      PGresult* prepared = PQprepare(raw, "floor_write", kWriteSql, 3, nullptr);
      const bool ok = PQresultStatus(prepared) == PGRES_COMMAND_OK;
      PQclear(prepared);
      if (!ok || PQsetnonblocking(raw, 1) != 0) throw std::runtime_error(PQerrorMessage(raw));
      backend = PQbackendPID(raw);
    }
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    auto inventory = pv1::Inventory::NewStub(channel);
    auto payment = pv1::Payment::NewStub(channel);
    auto shipping = pv1::Shipping::NewStub(channel);
    const uint64_t base =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());

    // --hand-off: a writer thread that runs posted jobs (as sagad's committer does).
    std::optional<runtime::Executor> writer;
    if (hand_off) writer.emplace(1);

    std::vector<double> total, writes, calls;
    double backend_cpu = 0, self_cpu = 0;
    const std::string body(200, 'x');  // about one event's detail
    for (int i = 0; i < warmup + sagas; ++i) {
      const uint64_t order = base + static_cast<uint64_t>(i);
      const bool measure = i >= warmup;
      if (i == warmup) {
        backend_cpu = ProcessTreeCpuSeconds(backend).value_or(0);
        self_cpu = SelfCpuSeconds();
      }
      const Clock::time_point start = Clock::now();
      auto write = [&](int seq) {
        const Clock::time_point t = Clock::now();
        if (raw != nullptr) {
          const std::string o = std::to_string(order), q = std::to_string(seq);
          const char* values[3] = {o.c_str(), q.c_str(), body.c_str()};
          if (PQsendQueryPrepared(raw, "floor_write", 3, values, nullptr, nullptr, 0) != 1) {
            throw std::runtime_error(PQerrorMessage(raw));
          }
          while (PQflush(raw) == 1) {
          }
          const Clock::time_point spin_until = Clock::now() + std::chrono::microseconds(spin_us);
          for (;;) {
            PQconsumeInput(raw);
            if (!PQisBusy(raw)) break;
            if (Clock::now() > spin_until) {
              pollfd p{PQsocket(raw), POLLIN, 0};
              poll(&p, 1, -1);
            }
          }
          while (PGresult* r = PQgetResult(raw)) {
            if (PQresultStatus(r) != PGRES_COMMAND_OK)
              throw std::runtime_error(PQresultErrorMessage(r));
            PQclear(r);
          }
        } else {
          pqxx::nontransaction tx(conn);
          tx.exec_prepared("floor_write", static_cast<int64_t>(order), seq, body);
        }
        if (measure) writes.push_back(MsSince(t));
      };
      auto call = [&](int step) {
        const pv1::StepRequest request = StepRequestFor(order, step);
        pv1::StepReply reply;
        grpc::ClientContext context;
        if (call_like_sagad) ShapeLikeSagad(context, order, step);
        const Clock::time_point t = Clock::now();
        grpc::Status status = step == 0   ? inventory->Reserve(&context, request, &reply)
                              : step == 1 ? payment->Charge(&context, request, &reply)
                                          : shipping->Schedule(&context, request, &reply);
        if (!status.ok()) {
          throw std::runtime_error("participant call failed: " + status.error_message());
        }
        if (measure) calls.push_back(MsSince(t));
      };
      if (!hand_off) {
        write(0);
        for (int step = 0; step < 3; ++step) {
          call(step);
          write(step + 1);
        }
      } else {
        // write(0) on the writer; its end starts call 0 (callback API); the callback posts
        // write(1) to the writer; and so on. The last write, or a failure, wakes this thread.
        std::promise<void> done;
        struct AsyncCall {
          pv1::StepRequest request;
          pv1::StepReply reply;
          grpc::ClientContext context;
        };
        std::function<void(int)> write_then_call;
        write_then_call = [&](int step) {  // on the writer: write `step`, then call `step`
          try {
            write(step);
          } catch (...) {
            done.set_exception(std::current_exception());
            return;
          }
          if (step == 3) {
            done.set_value();
            return;
          }
          auto c = std::make_shared<AsyncCall>();
          c->request = StepRequestFor(order, step);
          if (call_like_sagad) ShapeLikeSagad(c->context, order, step);
          auto on_done = [&, c, step](grpc::Status status) {
            if (!status.ok()) {
              done.set_exception(std::make_exception_ptr(
                  std::runtime_error("participant call failed: " + status.error_message())));
              return;
            }
            writer->Post([&, step] { write_then_call(step + 1); });
          };
          if (step == 0) {
            inventory->async()->Reserve(&c->context, &c->request, &c->reply, on_done);
          } else if (step == 1) {
            payment->async()->Charge(&c->context, &c->request, &c->reply, on_done);
          } else {
            shipping->async()->Schedule(&c->context, &c->request, &c->reply, on_done);
          }
        };
        writer->Post([&] { write_then_call(0); });
        done.get_future().get();
      }
      if (measure) total.push_back(MsSince(start));
    }
    writer.reset();
    backend_cpu = ProcessTreeCpuSeconds(backend).value_or(0) - backend_cpu;
    self_cpu = SelfCpuSeconds() - self_cpu;
    {
      pqxx::nontransaction cleanup(conn);
      cleanup.exec("DROP TABLE saga_floor_events");
    }
    const LatencySummary t = Summarize(total), w = Summarize(writes), c = Summarize(calls);
    std::printf("saga-floor: %d sagas, 4 writes and 3 calls each, one after the other\n", sagas);
    std::printf("  saga   p50 %.2f ms  p90 %.2f  p99 %.2f  mean %.2f\n", t.p50_ms, t.p90_ms,
                t.p99_ms, t.mean_ms);
    std::printf("  CPU per saga: PostgreSQL backend %.2f ms, this client %.2f ms\n",
                backend_cpu * 1e3 / sagas, self_cpu * 1e3 / sagas);
    std::printf("  write  p50 %.3f ms  p90 %.3f  p99 %.3f  mean %.3f\n", w.p50_ms, w.p90_ms,
                w.p99_ms, w.mean_ms);
    std::printf("  call   p50 %.3f ms  p90 %.3f  p99 %.3f  mean %.3f\n", c.p50_ms, c.p90_ms,
                c.p99_ms, c.mean_ms);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "saga-floor: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
}  // namespace saga::bench

int main(int argc, char** argv) { return saga::bench::Main(argc, argv); }
