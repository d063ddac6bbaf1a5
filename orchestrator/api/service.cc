#include "orchestrator/api/service.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/time_util.h"
#include "orchestrator/common/status_macros.h"
#include "orchestrator/definition/hash.h"
#include "orchestrator/definition/loader.h"
#include "orchestrator/rpc/completion_queue.h"

namespace saga::api {
namespace {

using google::protobuf::util::TimeUtil;

bool IsHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}

saga::v1::SagaStatus ToProto(engine::SagaStatus s) {
  switch (s) {
    case engine::SagaStatus::kRunning:
      return saga::v1::SAGA_STATUS_RUNNING;
    case engine::SagaStatus::kCompleted:
      return saga::v1::SAGA_STATUS_COMPLETED;
    case engine::SagaStatus::kCompensating:
      return saga::v1::SAGA_STATUS_COMPENSATING;
    case engine::SagaStatus::kCompensated:
      return saga::v1::SAGA_STATUS_COMPENSATED;
    case engine::SagaStatus::kFailed:
      return saga::v1::SAGA_STATUS_FAILED;
  }
  return saga::v1::SAGA_STATUS_UNSPECIFIED;
}

saga::v1::StepStatus ToProto(engine::StepStatus s) {
  switch (s) {
    case engine::StepStatus::kPending:
      return saga::v1::STEP_STATUS_PENDING;
    case engine::StepStatus::kRunning:
      return saga::v1::STEP_STATUS_RUNNING;
    case engine::StepStatus::kSucceeded:
      return saga::v1::STEP_STATUS_SUCCEEDED;
    case engine::StepStatus::kFailed:
      return saga::v1::STEP_STATUS_FAILED;
    case engine::StepStatus::kCompensating:
      return saga::v1::STEP_STATUS_COMPENSATING;
    case engine::StepStatus::kCompensated:
      return saga::v1::STEP_STATUS_COMPENSATED;
    case engine::StepStatus::kCompensationFailed:
      return saga::v1::STEP_STATUS_COMPENSATION_FAILED;
  }
  return saga::v1::STEP_STATUS_UNSPECIFIED;
}

// Rejects nesting deeper than kMaxJsonDepth before any recursive processing sees the text.
bool DepthWithin(const std::string& text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

bool HasNul(const nlohmann::json& j) {
  if (j.is_string()) return j.get_ref<const std::string&>().find('\0') != std::string::npos;
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) {
      if (k.find('\0') != std::string::npos || HasNul(v)) return true;
    }
  }
  if (j.is_array()) {
    for (const auto& v : j) {
      if (HasNul(v)) return true;
    }
  }
  return false;
}

std::string EncodePageToken(absl::Time created, const std::string& id) {
  return absl::WebSafeBase64Escape(absl::StrCat(absl::ToUnixMicros(created), ",", id));
}

absl::Status DecodePageToken(const std::string& token, std::pair<absl::Time, std::string>* out) {
  std::string raw;
  std::vector<std::string> parts;
  int64_t micros = 0;
  if (absl::WebSafeBase64Unescape(token, &raw)) parts = absl::StrSplit(raw, ',');
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &micros) || !ValidateSagaId(parts[1]).ok()) {
    return absl::InvalidArgumentError("page_token is not a token returned by ListSagas");
  }
  *out = {absl::FromUnixMicros(micros), parts[1]};
  return absl::OkStatus();
}

void FillDefinitionInfo(const store::DefinitionRecord& record, saga::v1::DefinitionInfo* out) {
  out->set_name(record.name);
  out->set_version(record.version);
  out->set_content_hash(record.content_hash);
  *out->mutable_created_at() = ToProto(record.created_at);
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  (void)google::protobuf::util::JsonStringToMessage(record.spec_json, out->mutable_definition(),
                                                    options);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status UnknownOutcome(const absl::Status& status, absl::string_view what, bool retry_is_safe,
                            absl::string_view advice) {
  if (status.code() != absl::StatusCode::kUnknown) return status;
  std::string message =
      absl::StrCat(what, " may or may not have been recorded (", status.message(), "); ", advice);
  return retry_is_safe ? absl::UnavailableError(message) : absl::UnknownError(message);
}

absl::Status StartFailure(const absl::Status& status, bool has_idempotency_key) {
  if (has_idempotency_key) {
    return UnknownOutcome(status, "the start", true,
                          "retry with the same idempotency_key: it returns the saga if it was "
                          "recorded");
  }
  return UnknownOutcome(status, "the start", false,
                        "starts without an idempotency_key cannot be retried safely");
}

absl::Status ValidateSagaId(const std::string& id) {
  bool ok = id.size() == 36;
  for (size_t i = 0; ok && i < id.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    ok = dash ? id[i] == '-' : IsHex(id[i]);
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("saga_id: '", id.substr(0, 64), "' is not a saga id (a lowercase UUID)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateIdempotencyKey(const std::string& key) {
  if (key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("idempotency_key: longer than ", kMaxKeyBytes, " bytes"));
  }
  for (char c : key) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          "idempotency_key: only letters, digits and . _ : - are allowed");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateTraceparent(const std::string& tp) {
  // version "00": 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, ids not all zero.
  bool ok = tp.size() == 55 && tp[0] == '0' && tp[1] == '0' && tp[2] == '-' && tp[35] == '-' &&
            tp[52] == '-';
  for (size_t i = 3; ok && i < 55; ++i) {
    if (i == 35 || i == 52) continue;
    ok = IsHex(tp[i]);
  }
  if (ok &&
      (tp.substr(3, 32) == std::string(32, '0') || tp.substr(36, 16) == std::string(16, '0'))) {
    ok = false;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        "traceparent: not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>, lowercase)");
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ParseInput(const std::string& text) {
  if (text.size() > kMaxInputBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_json: ", text.size(), " bytes is over the limit of ", kMaxInputBytes));
  }
  if (!DepthWithin(text)) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_json: nested deeper than ", kMaxJsonDepth, " levels"));
  }
  nlohmann::json input =
      text.empty() ? nlohmann::json::object() : nlohmann::json::parse(text, nullptr, false);
  if (input.is_discarded()) {
    return absl::InvalidArgumentError("input_json: not valid JSON (or not UTF-8)");
  }
  if (!input.is_object()) return absl::InvalidArgumentError("input_json: must be a JSON object");
  if (HasNul(input)) {
    return absl::InvalidArgumentError("input_json: contains a NUL character (\\u0000)");
  }
  return input;
}

// --- EventHub ---

EventHub::EventHub(store::Store* store, absl::Duration poll_interval,
                   std::function<bool(const std::string&)> runs_here)
    : store_(store),
      poll_interval_(poll_interval),
      runs_here_(std::move(runs_here)),
      poller_([this] { PollLoop(); }) {}

EventHub::~EventHub() {
  stop_ = true;
  poller_.join();
}

int64_t EventHub::Subscribe(const std::string& saga_id, Callback cb) {
  std::lock_guard<std::mutex> lock(mu_);
  RemoveDetachedLocked();
  const int64_t token = next_token_++;
  auto sub = std::make_shared<Sub>();
  sub->saga_id = saga_id;
  sub->cb = std::move(cb);
  sub->last_event_us = absl::ToUnixMicros(absl::Now());
  subs_[token] = sub;
  by_saga_.emplace(saga_id, token);
  return token;
}

void EventHub::Unsubscribe(int64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = subs_.find(token);
  if (it == subs_.end()) return;
  {
    std::lock_guard<std::mutex> cb_lock(it->second->cb_mu);
    it->second->active = false;
  }
  EraseLocked(it);
}

int64_t EventHub::watching() {
  std::lock_guard<std::mutex> lock(mu_);
  RemoveDetachedLocked();
  return static_cast<int64_t>(subs_.size());
}

void EventHub::Detach(int64_t token) {
  std::lock_guard<std::mutex> lock(detached_mu_);
  detached_.push_back(token);
}

void EventHub::RemoveDetachedLocked() {
  std::vector<int64_t> detached;
  {
    std::lock_guard<std::mutex> lock(detached_mu_);
    detached.swap(detached_);
  }
  for (int64_t token : detached) {
    if (auto it = subs_.find(token); it != subs_.end()) EraseLocked(it);
  }
}

void EventHub::EraseLocked(std::map<int64_t, std::shared_ptr<Sub>>::iterator it) {
  auto range = by_saga_.equal_range(it->second->saga_id);
  for (auto i = range.first; i != range.second; ++i) {
    if (i->second == it->first) {
      by_saga_.erase(i);
      break;
    }
  }
  subs_.erase(it);
}

void EventHub::Publish(const std::string& saga_id, const std::vector<engine::Event>& events) {
  std::vector<std::shared_ptr<Sub>> targets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto range = by_saga_.equal_range(saga_id);
    for (auto i = range.first; i != range.second; ++i) targets.push_back(subs_[i->second]);
  }
  const absl::Time now = absl::Now();
  const int64_t last_seq = events.empty() ? 0 : events.back().seq;
  for (auto& sub : targets) {
    std::lock_guard<std::mutex> lock(sub->cb_mu);
    sub->last_event_us = absl::ToUnixMicros(now);
    if (last_seq > sub->seen_seq) sub->seen_seq = last_seq;
    if (sub->active) sub->cb(events);
  }
}

void EventHub::PollLoop() {
  while (!stop_.load()) {
    absl::SleepFor(std::min(poll_interval_, absl::Milliseconds(100)));
    static thread_local absl::Time last = absl::InfinitePast();
    if (absl::Now() - last < poll_interval_) continue;
    last = absl::Now();
    std::map<std::string, std::vector<std::shared_ptr<Sub>>> watched;
    {
      std::lock_guard<std::mutex> lock(mu_);
      RemoveDetachedLocked();
      const absl::Time now = absl::Now();
      for (const auto& [token, sub] : subs_) {
        // Sagas of this replica publish their events at once; poll only the quiet ones.
        if (now - absl::FromUnixMicros(sub->last_event_us.load()) >= poll_interval_) {
          watched[sub->saga_id].push_back(sub);
        }
      }
    }
    for (const auto& [id, subs] : watched) {
      // This replica's own sagas publish every event as it commits, even after a long quiet
      // spell (a backoff, an operator's pause): reading them would find nothing new.
      if (runs_here_ != nullptr && runs_here_(id)) continue;
      // Only what the least advanced subscriber has not been given; each drops what it has.
      int64_t after_seq = INT64_MAX;
      for (const auto& sub : subs) after_seq = std::min<int64_t>(after_seq, sub->seen_seq);
      absl::StatusOr<std::vector<engine::Event>> events = store_->ReadEvents(id, after_seq);
      if (!events.ok() || events->empty()) continue;
      for (const auto& sub : subs) {
        std::lock_guard<std::mutex> lock(sub->cb_mu);
        if (events->back().seq > sub->seen_seq) sub->seen_seq = events->back().seq;
        if (sub->active) sub->cb(*events);
      }
    }
  }
}

// --- Service ---

SagaService::SagaService(ServiceOptions options, store::Store* store,
                         runtime::DefinitionRegistry* registry, runtime::Runtime* runtime)
    : options_(options),
      store_(store),
      registry_(registry),
      runtime_(runtime),
      hub_(
          store, options.watch_poll_interval,
          [runtime](const std::string& id) { return runtime != nullptr && runtime->RunsHere(id); }),
      db_(options.db_workers) {}

SagaService::~SagaService() { db_.Shutdown(); }

absl::Status SagaService::DoRegister(const saga::v1::RegisterDefinitionRequest& request,
                                     saga::v1::RegisterDefinitionResponse* response) {
  saga::v1::SagaDefinition proto;
  const std::string source = request.source_name().empty() ? "definition" : request.source_name();
  switch (request.source_case()) {
    case saga::v1::RegisterDefinitionRequest::kText: {
      SAGA_ASSIGN_OR_RETURN(proto, definition::ParseDefinitionText(request.text(), source));
      break;
    }
    case saga::v1::RegisterDefinitionRequest::kDefinition:
      proto = request.definition();
      break;
    default:
      return absl::InvalidArgumentError("source: set either text or definition");
  }
  std::map<std::string, std::string> files(request.proto_files().begin(),
                                           request.proto_files().end());
  SAGA_ASSIGN_OR_RETURN(runtime::RegisterResult result, registry_->Register(proto, files, source));
  response->set_name(result.definition->name);
  response->set_version(result.definition->version);
  response->set_created(result.created);
  return absl::OkStatus();
}

void SagaService::RegisterDefinition(Responder* reactor,
                                     const saga::v1::RegisterDefinitionRequest* request,
                                     saga::v1::RegisterDefinitionResponse* response) {
  db_.Post([this, reactor, request, response] {
    reactor->Finish(ToGrpcStatus(
        UnknownOutcome(DoRegister(*request, response), "the definition", true,
                       "registering it again is safe: the same content returns the same version")));
  });
}

void SagaService::GetDefinition(Responder* reactor, const saga::v1::GetDefinitionRequest* request,
                                saga::v1::DefinitionInfo* response) {
  if (request->name().empty() || request->version() < 0) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError(
        request->name().empty() ? "name: required" : "version: must be >= 0 (0 = latest)")));
    return;
  }
  db_.Post([this, reactor, request, response] {
    absl::StatusOr<store::DefinitionRecord> record =
        store_->GetDefinition(request->name(), request->version());
    if (record.ok()) FillDefinitionInfo(*record, response);
    reactor->Finish(ToGrpcStatus(record.status()));
  });
}

void SagaService::ListDefinitions(Responder* reactor,
                                  const saga::v1::ListDefinitionsRequest* /*request*/,
                                  saga::v1::ListDefinitionsResponse* response) {
  db_.Post([this, reactor, response] {
    absl::StatusOr<std::vector<store::DefinitionRecord>> records = store_->ListDefinitions();
    if (records.ok()) {
      for (const auto& r : *records) FillDefinitionInfo(r, response->add_definitions());
    }
    reactor->Finish(ToGrpcStatus(records.status()));
  });
}

void SagaService::StartSaga(Responder* reactor, const saga::v1::StartSagaRequest* request,
                            saga::v1::StartSagaResponse* response) {
  auto fail = [reactor](absl::Status s) { reactor->Finish(ToGrpcStatus(s)); };
  if (draining_.load() || !runtime_->accepting()) {
    fail(absl::UnavailableError("sagad is shutting down; retry on another replica"));
    return;
  }
  if (request->definition().empty()) {
    fail(absl::InvalidArgumentError("definition: required"));
    return;
  }
  if (request->version() < 0) {
    fail(absl::InvalidArgumentError("version: must be >= 0 (0 = latest)"));
    return;
  }
  if (absl::Status s = ValidateIdempotencyKey(request->idempotency_key()); !s.ok()) {
    fail(s);
    return;
  }
  if (!request->traceparent().empty()) {
    if (absl::Status s = ValidateTraceparent(request->traceparent()); !s.ok()) {
      fail(s);
      return;
    }
  }
  absl::StatusOr<nlohmann::json> input = ParseInput(request->input_json());
  if (!input.ok()) {
    fail(input.status());
    return;
  }
  // The definition usually comes from the registry's cache: then the saga starts on this
  // thread. Otherwise the registry reads the database, which must not block a gRPC thread.
  if (runtime::DefinitionPtr def =
          registry_->GetCached(request->definition(), request->version())) {
    Start(std::move(def), *std::move(input), request, reactor, response);
    return;
  }
  db_.Post([this, reactor, request, response, input = *std::move(input)]() mutable {
    absl::StatusOr<runtime::DefinitionPtr> def =
        registry_->Get(request->definition(), request->version());
    if (!def.ok()) {
      reactor->Finish(ToGrpcStatus(def.status()));
      return;
    }
    Start(*std::move(def), std::move(input), request, reactor, response);
  });
}

void SagaService::Start(runtime::DefinitionPtr def, nlohmann::json input,
                        const saga::v1::StartSagaRequest* request, Responder* reactor,
                        saga::v1::StartSagaResponse* response) {
  runtime::StartRequest start;
  start.definition = std::move(def);
  start.input_json = input.dump();
  start.input_hash = definition::Sha256Hex(start.input_json);
  start.input = std::move(input);
  start.idempotency_key = request->idempotency_key();
  start.traceparent = request->traceparent();
  if (start.traceparent.empty()) {
    // Every saga gets a trace, so that its logs and participant calls can be correlated.
    const std::string id = runtime::NewUuid();
    std::string hex;
    for (char c : id) {
      if (c != '-') hex.push_back(c);
    }
    start.traceparent = absl::StrCat("00-", hex, "-", hex.substr(0, 16), "-01");
  }
  const bool wait = request->wait();
  const bool has_key = !start.idempotency_key.empty();
  runtime_->StartSaga(std::move(start), [this, reactor, response, wait,
                                         has_key](absl::StatusOr<store::StartResult> result) {
    if (!result.ok()) {
      reactor->Finish(ToGrpcStatus(StartFailure(result.status(), has_key)));
      return;
    }
    response->set_saga_id(result->saga_id);
    response->set_created(result->created);
    if (!wait) {
      reactor->Finish(grpc::Status::OK);
      return;
    }
    AwaitEnd(result->saga_id, /*check_store=*/!result->created, reactor, response);
  });
}

// Answers `reactor` once the saga's terminal event is recorded. The subscription comes first,
// so no event is missed; a saga started elsewhere may have ended already: the store says.
void SagaService::AwaitEnd(const std::string& saga_id, bool check_store, Responder* reactor,
                           saga::v1::StartSagaResponse* response) {
  struct Waiter {
    std::mutex mu;
    bool done = false;
    int64_t token = 0;
    std::string reason;
  };
  auto waiter = std::make_shared<Waiter>();
  auto finish = [this, reactor, response, waiter](engine::SagaStatus status,
                                                  const std::string& error) {
    int64_t token = 0;
    {
      std::lock_guard<std::mutex> lock(waiter->mu);
      if (waiter->done) return;
      waiter->done = true;
      token = waiter->token;  // 0 if Subscribe has not returned yet: then AwaitEnd detaches
    }
    response->set_status(ToProto(status));
    response->set_error(error);
    reactor->Finish(grpc::Status::OK);
    // May run inside the hub's callback, so no Unsubscribe (it waits for the callback to
    // return); a late event finds `done` set and does nothing.
    if (token != 0) hub_.Detach(token);
  };
  const int64_t token =
      hub_.Subscribe(saga_id, [waiter, finish](const std::vector<engine::Event>& events) {
        for (const auto& e : events) {
          std::string detail_reason;
          if (auto it = e.detail.find("reason"); it != e.detail.end() && it->is_string()) {
            detail_reason = it->get<std::string>();
          }
          switch (e.type) {
            case engine::EventType::kSagaCompensating: {
              std::lock_guard<std::mutex> lock(waiter->mu);
              waiter->reason = detail_reason;
              break;
            }
            case engine::EventType::kSagaCompleted:
              finish(engine::SagaStatus::kCompleted, "");
              return;
            case engine::EventType::kSagaCompensated: {
              std::string reason;
              {
                std::lock_guard<std::mutex> lock(waiter->mu);
                reason = waiter->reason;
              }
              finish(engine::SagaStatus::kCompensated, reason);
              return;
            }
            case engine::EventType::kSagaFailed:
              finish(engine::SagaStatus::kFailed, detail_reason);
              return;
            default:
              break;
          }
        }
      });
  bool done = false;
  {
    std::lock_guard<std::mutex> lock(waiter->mu);
    waiter->token = token;
    done = waiter->done;
  }
  if (done) hub_.Detach(token);
  // A client that stops waiting (its deadline, a cancel) frees the call and the subscription
  // now rather than when the saga ends, which may be hours away.
  reactor->OnCancel([this, reactor, waiter, token] {
    {
      std::lock_guard<std::mutex> lock(waiter->mu);
      if (waiter->done) return;  // answered already
      waiter->done = true;
    }
    hub_.Detach(token);
    reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped waiting"));
  });
  if (!check_store) return;
  db_.Post([this, saga_id, finish] {
    absl::StatusOr<store::SagaRow> row = store_->GetSaga(saga_id);
    if (row.ok() && row->status != engine::SagaStatus::kRunning &&
        row->status != engine::SagaStatus::kCompensating) {
      finish(row->status, row->error);
    }
  });
}

void FillEvent(const std::string& saga_id, const engine::Event& e,
               const definition::Definition* def, engine::SagaStatus status_after,
               saga::v1::SagaEvent* out) {
  out->set_saga_id(saga_id);
  out->set_seq(e.seq);
  out->set_type(std::string(engine::EventTypeName(e.type)));
  if (e.step >= 0 && def != nullptr && static_cast<size_t>(e.step) < def->steps.size()) {
    out->set_step(def->steps[static_cast<size_t>(e.step)].name);
  }
  out->set_attempt(e.attempt);
  out->set_detail_json(e.detail.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  if (e.recorded_at != absl::InfinitePast()) *out->mutable_recorded_at() = ToProto(e.recorded_at);
  out->set_terminal(engine::IsTerminalEvent(e.type));
  out->set_status(ToProto(status_after));
}

void FillSaga(const store::SagaRow& row, const definition::Definition* def,
              const std::vector<engine::Event>& events, bool include_history, saga::v1::Saga* out) {
  out->set_id(row.id);
  out->set_definition(row.definition_name);
  out->set_version(row.definition_version);
  out->set_status(ToProto(row.status));
  out->set_input_json(row.input_json);
  out->set_idempotency_key(row.idempotency_key);
  out->set_error(row.error);
  *out->mutable_created_at() = ToProto(row.created_at);
  *out->mutable_updated_at() = ToProto(row.updated_at);
  if (def == nullptr) return;
  engine::SagaState state = engine::NewState(*def);
  for (const auto& e : events) {
    engine::Apply(*def, state, e);
    if (include_history) FillEvent(row.id, e, def, state.status, out->add_history());
  }
  for (size_t i = 0; i < def->steps.size(); ++i) {
    const engine::StepState& st = state.steps[i];
    saga::v1::StepInfo* step = out->add_steps();
    step->set_name(def->steps[i].name);
    step->set_status(ToProto(st.status));
    step->set_attempts(st.attempts);
    step->set_compensation_attempts(st.compensation_attempts);
    if (!st.output.is_null()) {
      step->set_output_json(
          st.output.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    step->set_last_error(st.last_error);
    step->set_outcome_unknown(st.outcome_unknown && st.status != engine::StepStatus::kSucceeded);
  }
}

absl::Status SagaService::DoGetSaga(const saga::v1::GetSagaRequest& request, saga::v1::Saga* out) {
  SAGA_RETURN_IF_ERROR(ValidateSagaId(request.saga_id()));
  SAGA_ASSIGN_OR_RETURN(store::SagaRow row, store_->GetSaga(request.saga_id()));
  SAGA_ASSIGN_OR_RETURN(std::vector<engine::Event> events, store_->ReadEvents(row.id, 0));
  SAGA_ASSIGN_OR_RETURN(runtime::DefinitionPtr def,
                        registry_->Get(row.definition_name, row.definition_version));
  FillSaga(row, def.get(), events, request.include_history(), out);
  return absl::OkStatus();
}

void SagaService::GetSaga(Responder* reactor, const saga::v1::GetSagaRequest* request,
                          saga::v1::Saga* response) {
  db_.Post([this, reactor, request, response] {
    reactor->Finish(ToGrpcStatus(DoGetSaga(*request, response)));
  });
}

void SagaService::ListSagas(Responder* reactor, const saga::v1::ListSagasRequest* request,
                            saga::v1::ListSagasResponse* response) {
  store::ListFilter filter;
  absl::Status status;
  if (request->page_size() < 0 || request->page_size() > kMaxPageSize) {
    status = absl::InvalidArgumentError(absl::StrCat("page_size: must be 0..", kMaxPageSize));
  }
  filter.limit = request->page_size() == 0 ? kDefaultPageSize : request->page_size();
  filter.definition = request->definition();
  switch (request->status()) {
    case saga::v1::SAGA_STATUS_UNSPECIFIED:
      break;
    case saga::v1::SAGA_STATUS_RUNNING:
      filter.status = engine::SagaStatus::kRunning;
      break;
    case saga::v1::SAGA_STATUS_COMPLETED:
      filter.status = engine::SagaStatus::kCompleted;
      break;
    case saga::v1::SAGA_STATUS_COMPENSATING:
      filter.status = engine::SagaStatus::kCompensating;
      break;
    case saga::v1::SAGA_STATUS_COMPENSATED:
      filter.status = engine::SagaStatus::kCompensated;
      break;
    case saga::v1::SAGA_STATUS_FAILED:
      filter.status = engine::SagaStatus::kFailed;
      break;
    default:
      status = absl::InvalidArgumentError("status: unknown value");
      break;
  }
  if (status.ok() && !request->page_token().empty()) {
    std::pair<absl::Time, std::string> cursor;
    status = DecodePageToken(request->page_token(), &cursor);
    filter.before = cursor;
  }
  if (!status.ok()) {
    reactor->Finish(ToGrpcStatus(status));
    return;
  }
  db_.Post([this, reactor, response, filter]() mutable {
    store::ListFilter probe = filter;
    probe.limit = filter.limit + 1;  // one more tells whether another page exists
    absl::StatusOr<std::vector<store::SagaRow>> rows = store_->ListSagas(probe);
    if (rows.ok()) {
      const bool more = rows->size() > static_cast<size_t>(filter.limit);
      if (more) rows->resize(static_cast<size_t>(filter.limit));
      for (const auto& row : *rows) FillSaga(row, nullptr, {}, false, response->add_sagas());
      if (more) {
        response->set_next_page_token(EncodePageToken(rows->back().created_at, rows->back().id));
      }
    }
    reactor->Finish(ToGrpcStatus(rows.status()));
  });
}

void SagaService::AbortSaga(Responder* reactor, const saga::v1::AbortSagaRequest* request,
                            saga::v1::AbortSagaResponse* /*response*/) {
  absl::Status status = ValidateSagaId(request->saga_id());
  if (status.ok() && request->reason().size() > kMaxReasonBytes) {
    status = absl::InvalidArgumentError(absl::StrCat("reason: longer than ", kMaxReasonBytes));
  }
  if (status.ok() && request->reason().find('\0') != std::string::npos) {
    status = absl::InvalidArgumentError("reason: contains a NUL character");
  }
  if (!status.ok()) {
    reactor->Finish(ToGrpcStatus(status));
    return;
  }
  db_.Post([this, reactor, request] {
    const std::string reason =
        request->reason().empty() ? "aborted by an operator" : request->reason();
    absl::StatusOr<store::SagaRow> row = store_->RequestAbort(request->saga_id(), reason);
    if (row.ok()) runtime_->Poke(row->id);
    reactor->Finish(ToGrpcStatus(UnknownOutcome(row.status(), "the abort request", true,
                                                "requesting the abort again is safe")));
  });
}

void SagaService::RetrySaga(Responder* reactor, const saga::v1::RetrySagaRequest* request,
                            saga::v1::RetrySagaResponse* /*response*/) {
  if (absl::Status s = ValidateSagaId(request->saga_id()); !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return;
  }
  db_.Post([this, reactor, request] {
    absl::StatusOr<store::SagaRow> row = store_->RequestRetry(request->saga_id());
    if (row.ok()) runtime_->Wake();
    // A retry that was recorded has moved the saga out of FAILED, so a second one would be
    // refused: the caller must look first.
    reactor->Finish(ToGrpcStatus(
        UnknownOutcome(row.status(), "the retry request", false,
                       "GetSaga tells whether the saga left FAILED before you retry again")));
  });
}

// One WatchSaga call: streams a saga's events in order, without gaps: history from the store
// first, then events as the hub delivers them (from this replica at once, from others by
// polling). At most one write is in flight. Frees itself once every operation given to gRPC
// has come back and its history read has returned.
class SagaService::WatchCall final : public rpc::Tag {
 public:
  static void Listen(SagaService* service, grpc::ServerCompletionQueue* cq) {
    auto* call = new WatchCall(service, cq);
    call->ctx_.AsyncNotifyWhenDone(&call->done_tag_);
    if (!service->StartOp([&] {
          service->async_.RequestWatchSaga(&call->ctx_, &call->request_, &call->writer_, cq, cq,
                                           static_cast<rpc::Tag*>(call));
        })) {
      delete call;
    }
  }

  // The call arrived, or (!ok) the server is shutting down and it never will: then gRPC
  // returns nothing else of it.
  void Proceed(bool ok) override {
    if (!ok) {
      delete this;
      return;
    }
    Listen(service_, cq_);
    absl::Status s = ValidateSagaId(request_.saga_id());
    if (!s.ok() || request_.after_seq() < 0) {
      std::lock_guard<std::mutex> lock(mu_);
      refs_ = 1;  // the done notification
      FinishLocked(
          ToGrpcStatus(s.ok() ? absl::InvalidArgumentError("after_seq: must be >= 0") : s));
      return;
    }
    saga_id_ = request_.saga_id();
    next_seq_ = request_.after_seq() + 1;
    Begin();
  }

 private:
  WatchCall(SagaService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), writer_(&ctx_) {
    op_tag_.Set([this](bool ok) { OnOpDone(ok); });
    done_tag_.Set([this](bool /*ok*/) { OnDone(); });
  }

  void Begin() {
    token_ = service_->hub_.Subscribe(
        saga_id_, [this](const std::vector<engine::Event>& events) { Offer(events); });
    service_->db_.Post([this] {
      absl::StatusOr<store::SagaRow> row = service_->store_->GetSaga(saga_id_);
      absl::StatusOr<runtime::DefinitionPtr> def =
          row.ok() ? service_->registry_->Get(row->definition_name, row->definition_version)
                   : absl::StatusOr<runtime::DefinitionPtr>(row.status());
      absl::StatusOr<std::vector<engine::Event>> events =
          def.ok() ? service_->store_->ReadEvents(saga_id_, 0)
                   : absl::StatusOr<std::vector<engine::Event>>(def.status());
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!events.ok()) {
          FinishLocked(ToGrpcStatus(events.status()));
        } else {
          def_ = *def;
          state_ = engine::NewState(*def_);
          for (const auto& e : *events) {
            if (e.seq >= next_seq_) {
              pending_[e.seq] = e;
            } else {
              history_[e.seq] = e;
            }
          }
          for (auto& [seq, e] : early_) {
            if (seq >= next_seq_) pending_[seq] = std::move(e);
          }
          early_.clear();
          PumpLocked();
        }
      }
      Release();
    });
  }

  // A write or the finish came back.
  void OnOpDone(bool ok) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!finish_called_) {
        if (!ok) {
          FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
        } else if (stop_) {
          CallFinishLocked();
        } else {
          PumpLocked();
        }
      }
    }
    Release();
  }

  // The call is over: answered, or cancelled by the client or by the server's shutdown.
  void OnDone() {
    if (ctx_.IsCancelled()) {
      std::lock_guard<std::mutex> lock(mu_);
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
    // Outside mu_, which the hub's callback takes; no callback runs after this returns.
    if (token_ != 0) service_->hub_.Unsubscribe(token_);
    Release();
  }

  void Release() {
    bool last;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

  void Offer(const std::vector<engine::Event>& events) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    if (def_ == nullptr) {  // history not read yet: keep live events aside
      for (const auto& e : events) early_[e.seq] = e;
      return;
    }
    for (const auto& e : events) {
      if (e.seq >= next_seq_) pending_[e.seq] = e;
    }
    PumpLocked();
  }

  void PumpLocked() {
    if (stop_ || writing_ || def_ == nullptr) return;
    // Fold in the history before the first event to send, to know the status after each one.
    while (!history_.empty() && history_.begin()->first == applied_seq_ + 1) {
      engine::Apply(*def_, state_, history_.begin()->second);
      applied_seq_++;
      history_.erase(history_.begin());
    }
    auto it = pending_.find(next_seq_);
    if (it == pending_.end() || applied_seq_ + 1 != next_seq_) return;
    engine::Apply(*def_, state_, it->second);
    applied_seq_ = it->first;
    out_.Clear();
    FillEvent(saga_id_, it->second, def_.get(), state_.status, &out_);
    const bool terminal = engine::IsTerminalEvent(it->second.type);
    pending_.erase(it);
    next_seq_++;
    if (terminal) {
      stop_ = true;
      finish_called_ = true;
    }
    writing_ = service_->StartOp([&] {
      if (terminal) {
        writer_.WriteAndFinish(out_, grpc::WriteOptions(), grpc::Status::OK, &op_tag_);
      } else {
        writer_.Write(out_, &op_tag_);
      }
    });
    if (writing_) {
      ++refs_;
    } else {
      stop_ = true;  // the service is shut down: the call is cancelled already
    }
  }

  void FinishLocked(grpc::Status status) {
    if (stop_) return;
    stop_ = true;
    finish_status_ = std::move(status);
    if (!writing_) CallFinishLocked();
  }

  void CallFinishLocked() {
    if (finish_called_) return;
    finish_called_ = true;
    if (service_->StartOp([&] { writer_.Finish(finish_status_, &op_tag_); })) ++refs_;
  }

  SagaService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  saga::v1::WatchSagaRequest request_;
  grpc::ServerAsyncWriter<saga::v1::SagaEvent> writer_;
  rpc::FnTag op_tag_;    // the write or finish in flight
  rpc::FnTag done_tag_;  // the call is over
  std::string saga_id_;
  int64_t token_ = 0;
  std::mutex mu_;
  // Operations not yet returned: the done notification, the history read, the write or finish
  // in flight.
  int refs_ = 2;
  runtime::DefinitionPtr def_;
  engine::SagaState state_;
  std::map<int64_t, engine::Event> history_;  // before next_seq_, folded into state_ only
  std::map<int64_t, engine::Event> pending_;  // to send
  std::map<int64_t, engine::Event> early_;    // arrived before the history was read
  int64_t next_seq_ = 1;
  int64_t applied_seq_ = 0;
  bool writing_ = false;
  bool stop_ = false;
  bool finish_called_ = false;
  grpc::Status finish_status_;
  saga::v1::SagaEvent out_;
};

namespace {

// The request and response types of a handler.
template <typename>
struct HandlerTypes;
template <typename Req, typename Resp>
struct HandlerTypes<void (SagaService::*)(Responder*, const Req*, Resp*)> {
  using Request = Req;
  using Response = Resp;
};

// One call of the unary method that `kRequest` (the generated service's RequestFoo) requests
// and `kHandler` answers: requested on the queue, handed to the handler when it arrives (when
// the next call of the method is requested), freed once its answer has been sent.
// `kNotifyCancel`: the call also learns when it is over (gRPC's AsyncNotifyWhenDone), to run
// the handler's OnCancel hook if the client gave up first; freed once both are back.
template <auto kRequest, auto kHandler, bool kNotifyCancel = false>
class UnaryCall final : public rpc::Tag, public Responder {
 public:
  using Request = typename HandlerTypes<decltype(kHandler)>::Request;
  using Response = typename HandlerTypes<decltype(kHandler)>::Response;

  static void Listen(SagaService* service, grpc::ServerCompletionQueue* cq) {
    auto* call = new UnaryCall(service, cq);
    if constexpr (kNotifyCancel) call->ctx_.AsyncNotifyWhenDone(&call->done_tag_);
    if (!service->StartOp([&] {
          (service->async_service()->*kRequest)(&call->ctx_, &call->request_, &call->writer_, cq,
                                                cq, static_cast<rpc::Tag*>(call));
        })) {
      delete call;
    }
  }

  void Proceed(bool ok) override {
    if (answering_) {  // the answer went out (or the call was over already)
      Release();
      return;
    }
    if (!ok) {  // the server shuts down before the call came: nothing else comes of it
      delete this;
      return;
    }
    answering_ = true;
    Listen(service_, cq_);
    (service_->*kHandler)(this, &request_, &response_);  // may free this (Finish)
  }

  void Finish(const grpc::Status& status) override {
    if (!service_->StartOp(
            [&] { writer_.Finish(response_, status, static_cast<rpc::Tag*>(this)); })) {
      Release();  // the server is shut down and has cancelled the call
    }
  }

  void OnCancel(absl::AnyInvocable<void() &&> hook) override {
    if constexpr (kNotifyCancel) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!cancelled_) {
          cancel_hook_ = std::move(hook);
          return;
        }
      }
      std::move(hook)();
    }
  }

 private:
  UnaryCall(SagaService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), writer_(&ctx_) {
    if constexpr (kNotifyCancel) done_tag_.Set([this](bool /*ok*/) { OnDone(); });
  }

  // The call is over: answered, or cancelled by the client, its deadline or the server's
  // shutdown.
  void OnDone() {
    absl::AnyInvocable<void() &&> hook;
    if (ctx_.IsCancelled()) {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      hook = std::move(cancel_hook_);
    }
    if (hook) std::move(hook)();  // may Finish, whose tag then comes back
    Release();
  }

  // Frees the call once both the answer's tag and (with kNotifyCancel) the done notification
  // are back.
  void Release() {
    bool last = true;
    if constexpr (kNotifyCancel) {
      std::lock_guard<std::mutex> lock(mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

  SagaService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  Request request_;
  Response response_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  bool answering_ = false;
  // kNotifyCancel only:
  rpc::FnTag done_tag_;
  std::mutex mu_;
  int refs_ = 2;  // the answer's tag and the done notification
  bool cancelled_ = false;
  absl::AnyInvocable<void() &&> cancel_hook_;
};

}  // namespace

void SagaService::Register(grpc::ServerBuilder& builder) { builder.RegisterService(&async_); }

bool SagaService::StartOp(absl::FunctionRef<void()> start) {
  absl::ReaderMutexLock lock(&ops_mu_);
  if (closed_) return false;
  start();
  return true;
}

void SagaService::Shutdown() {
  absl::MutexLock lock(&ops_mu_);
  closed_ = true;
}

void SagaService::Start(grpc::ServerCompletionQueue* cq) {
  using Async = saga::v1::SagaOrchestrator::AsyncService;
  UnaryCall<&Async::RequestRegisterDefinition, &SagaService::RegisterDefinition>::Listen(this, cq);
  UnaryCall<&Async::RequestGetDefinition, &SagaService::GetDefinition>::Listen(this, cq);
  UnaryCall<&Async::RequestListDefinitions, &SagaService::ListDefinitions>::Listen(this, cq);
  UnaryCall<&Async::RequestStartSaga, &SagaService::StartSaga, /*kNotifyCancel=*/true>::Listen(this,
                                                                                               cq);
  UnaryCall<&Async::RequestGetSaga, &SagaService::GetSaga>::Listen(this, cq);
  UnaryCall<&Async::RequestListSagas, &SagaService::ListSagas>::Listen(this, cq);
  UnaryCall<&Async::RequestAbortSaga, &SagaService::AbortSaga>::Listen(this, cq);
  UnaryCall<&Async::RequestRetrySaga, &SagaService::RetrySaga>::Listen(this, cq);
  WatchCall::Listen(this, cq);
}

}  // namespace saga::api
