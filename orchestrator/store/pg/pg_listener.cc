#include "orchestrator/store/pg/pg_listener.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "orchestrator/store/pg/connection_pool.h"
#include "orchestrator/store/pg/conninfo.h"

namespace saga::store::pg {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(200);
constexpr absl::Duration kInitialBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(5);

// Queues the payloads; Run hands them out after await_notification returns, so that the
// caller's code never runs inside libpqxx.
class Receiver final : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection& conn, const std::string& channel)
      : pqxx::notification_receiver(conn, channel) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    payloads_.push_back(payload);
  }
  std::vector<std::string> Take() { return std::exchange(payloads_, {}); }

 private:
  std::vector<std::string> payloads_;
};

bool IsPlainIdentifier(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  if (!absl::ascii_islower(static_cast<unsigned char>(name[0])) && name[0] != '_') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_islower(static_cast<unsigned char>(c)) ||
           absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '_';
  });
}

// Sleeps `duration`, waking early when `stop` turns true.
void SleepUnlessStopped(absl::Duration duration, const std::atomic<bool>& stop) {
  const absl::Time deadline = absl::Now() + duration;
  while (!stop.load()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return;
    absl::SleepFor(std::min(left, absl::Milliseconds(50)));
  }
}

}  // namespace

struct PgListener::Connection {
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<Receiver> receiver;

  ~Connection() {
    // Disconnect first: the receiver then skips its UNLISTEN (which could try to reconnect).
    if (conn != nullptr) conn->disconnect();
    receiver.reset();
  }
};

absl::StatusOr<std::unique_ptr<PgListener::Connection>> PgListener::Connect(
    const std::string& conninfo, const std::string& channel) {
  absl::StatusOr<std::unique_ptr<pqxx::connection>> conn = OpenConnection(conninfo, {});
  if (!conn.ok()) return conn.status();
  auto connection = std::make_unique<Connection>();
  connection->conn = *std::move(conn);
  try {
    connection->receiver = std::make_unique<Receiver>(*connection->conn, channel);
  } catch (const std::exception& e) {
    return absl::UnavailableError(StatusFromException("LISTEN", e, false).message());
  }
  if (!connection->conn->is_open()) {
    return absl::UnavailableError("LISTEN: the connection was lost");
  }
  return connection;
}

absl::StatusOr<std::unique_ptr<PgListener>> PgListener::Create(const std::string& url,
                                                               const std::string& channel) {
  if (!IsPlainIdentifier(channel)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("channel '%s' is not a lowercase identifier", absl::CHexEscape(channel)));
  }
  std::string conninfo = url;
  if (!HasConnectionParameter(conninfo, "connect_timeout")) {
    conninfo = WithConnectionParameter(conninfo, "connect_timeout", "5");
  }
  absl::StatusOr<std::unique_ptr<Connection>> conn = Connect(conninfo, channel);
  if (!conn.ok()) return conn.status();
  return std::unique_ptr<PgListener>(new PgListener(conninfo, channel, *std::move(conn)));
}

PgListener::PgListener(std::string conninfo, std::string channel, std::unique_ptr<Connection> conn)
    : conninfo_(std::move(conninfo)), channel_(std::move(channel)), conn_(std::move(conn)) {}

PgListener::~PgListener() = default;

void PgListener::Run(std::function<void(std::string payload)> on_notify,
                     const std::atomic<bool>& stop) {
  absl::Duration backoff = kInitialBackoff;
  while (!stop.load()) {
    if (conn_ == nullptr) {
      absl::StatusOr<std::unique_ptr<Connection>> conn = Connect(conninfo_, channel_);
      if (!conn.ok()) {
        SleepUnlessStopped(backoff, stop);
        backoff = std::min(backoff * 2, kMaxBackoff);
        continue;
      }
      conn_ = *std::move(conn);
      backoff = kInitialBackoff;
      on_notify("");  // notifications may have been missed while disconnected
      continue;
    }
    bool broken = false;
    try {
      conn_->conn->await_notification(0, absl::ToInt64Microseconds(kPollInterval));
      broken = !conn_->conn->is_open();
    } catch (const std::exception&) {
      broken = true;
    }
    // Payloads received before a break are still delivered.
    for (std::string& payload : conn_->receiver->Take()) on_notify(std::move(payload));
    if (broken) conn_.reset();
  }
}

}  // namespace saga::store::pg
