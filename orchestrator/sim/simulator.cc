#include "orchestrator/sim/simulator.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"
#include "orchestrator/engine/engine.h"

namespace saga::sim {
namespace {

namespace pb = google::protobuf;
using definition::CallSpec;
using definition::Definition;
using definition::StepSpec;
using engine::CallKind;
using engine::EventType;

// Debian's Abseil has its own string_view: convert explicitly at the boundary.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr int kMaxCount = 1000;
// Longest JSON shown on one line of the human trace.
constexpr size_t kMaxShownJson = 96;
// Message nesting filled in a synthetic response (recursive types stop here).
constexpr int kMaxSyntheticDepth = 4;

const absl::StatusCode kCodes[] = {
    absl::StatusCode::kCancelled,          absl::StatusCode::kUnknown,
    absl::StatusCode::kInvalidArgument,    absl::StatusCode::kDeadlineExceeded,
    absl::StatusCode::kNotFound,           absl::StatusCode::kAlreadyExists,
    absl::StatusCode::kPermissionDenied,   absl::StatusCode::kResourceExhausted,
    absl::StatusCode::kFailedPrecondition, absl::StatusCode::kAborted,
    absl::StatusCode::kOutOfRange,         absl::StatusCode::kUnimplemented,
    absl::StatusCode::kInternal,           absl::StatusCode::kUnavailable,
    absl::StatusCode::kDataLoss,           absl::StatusCode::kUnauthenticated,
};

std::string CodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

absl::Status FlagError(const ScriptFlag& flag, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AV(FlagName(flag.kind)), " ", flag.value, ": ", AV(what)));
}

std::string UnknownStep(const Definition& def, std::string_view name) {
  std::vector<std::string> names;
  std::string best;
  size_t best_distance = 3;  // suggest only close names
  for (const StepSpec& s : def.steps) {
    names.push_back(s.name);
    const size_t d = EditDistance(name, s.name);
    if (d < best_distance) {
      best_distance = d;
      best = s.name;
    }
  }
  std::string out = absl::StrCat("unknown step '", AV(name), "' (");
  if (!best.empty()) absl::StrAppend(&out, "did you mean '", best, "'? ");
  absl::StrAppend(&out, "steps: ", absl::StrJoin(names, ", "), ")");
  return out;
}

// Splits a trailing "xN" off `text`. Returns false (and leaves `count` alone) if there is none.
bool SplitCount(std::string_view text, std::string_view* head, std::string_view* count) {
  const size_t x = text.find_last_of("xX");
  if (x == std::string_view::npos || x + 1 >= text.size()) return false;
  for (size_t i = x + 1; i < text.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) return false;
  }
  *head = text.substr(0, x);
  *count = text.substr(x + 1);
  return true;
}

absl::Status ParseCount(const ScriptFlag& flag, std::string_view digits, int* out) {
  int n = 0;
  if (!absl::SimpleAtoi(AV(digits), &n) || n < 1 || n > kMaxCount) {
    return FlagError(flag, absl::StrCat("the count after 'x' must be 1..", kMaxCount, ", got '",
                                        AV(digits), "'"));
  }
  *out = n;
  return absl::OkStatus();
}

std::string CodeList() {
  std::vector<std::string> names;
  for (absl::StatusCode c : kCodes) names.push_back(CodeName(c));
  return absl::StrJoin(names, ", ");
}

// --- synthetic responses ---------------------------------------------------------------------

bool SkippedWellKnownType(const pb::Descriptor& d) {
  const std::string& n = d.full_name();
  return n == "google.protobuf.Any" || n == "google.protobuf.Struct" ||
         n == "google.protobuf.Value" || n == "google.protobuf.ListValue" ||
         n == "google.protobuf.FieldMask";
}

void FillMessage(pb::Message* m, std::string_view step, int depth);

// Sets (or, for a repeated field, adds) one plausible value of `f`.
void FillField(pb::Message* m, const pb::FieldDescriptor* f, std::string_view step, int depth) {
  const pb::Reflection* r = m->GetReflection();
  const bool rep = f->is_repeated();
  const std::string text = absl::StrCat(f->name(), "-", AV(step), "-sim");
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      rep ? r->AddInt32(m, f, 1) : r->SetInt32(m, f, 1);
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      rep ? r->AddInt64(m, f, 1) : r->SetInt64(m, f, 1);
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      rep ? r->AddUInt32(m, f, 1) : r->SetUInt32(m, f, 1);
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      rep ? r->AddUInt64(m, f, 1) : r->SetUInt64(m, f, 1);
      break;
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      rep ? r->AddDouble(m, f, 1) : r->SetDouble(m, f, 1);
      break;
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      rep ? r->AddFloat(m, f, 1) : r->SetFloat(m, f, 1);
      break;
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      rep ? r->AddBool(m, f, true) : r->SetBool(m, f, true);
      break;
    case pb::FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(m, f, text) : r->SetString(m, f, text);
      break;
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      // The first non-default value: the zero value usually means "unspecified".
      const pb::EnumDescriptor* e = f->enum_type();
      const pb::EnumValueDescriptor* v = e->value(e->value_count() > 1 ? 1 : 0);
      rep ? r->AddEnum(m, f, v) : r->SetEnum(m, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE: {
      const pb::Descriptor* d = f->message_type();
      if (depth >= kMaxSyntheticDepth || SkippedWellKnownType(*d)) return;
      pb::Message* sub = rep ? r->AddMessage(m, f) : r->MutableMessage(m, f);
      FillMessage(sub, step, depth + 1);
      break;
    }
  }
}

void FillMessage(pb::Message* m, std::string_view step, int depth) {
  const pb::Descriptor* d = m->GetDescriptor();
  const pb::Reflection* r = m->GetReflection();
  if (d->full_name() == "google.protobuf.Timestamp" ||
      d->full_name() == "google.protobuf.Duration") {
    r->SetInt64(m, d->FindFieldByName("seconds"), 1);
    return;
  }
  std::set<const pb::OneofDescriptor*> oneofs;
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    // One member per oneof: setting another would clear the first.
    if (const pb::OneofDescriptor* o = f->real_containing_oneof(); o != nullptr) {
      if (!oneofs.insert(o).second) continue;
    }
    FillField(m, f, step, depth);
  }
}

// --- the simulation --------------------------------------------------------------------------

// A script entry and how often it has answered.
struct ScriptedOutcome {
  Outcome outcome;
  int used = 0;
};

struct StepCursor {
  std::vector<ScriptedOutcome> entries;
  size_t next = 0;  // the entry answering the next attempt
  int attempts = 0;
  int reached = 0;  // attempts whose request was sent (the script answered them)

  // The outcome of the next attempt; null when unscripted (success).
  const Outcome* Take() {
    while (next < entries.size()) {
      ScriptedOutcome& e = entries[next];
      if (e.outcome.count == 0 || e.used < e.outcome.count) {
        ++e.used;
        return &e.outcome;
      }
      ++next;
    }
    return nullptr;
  }
};

struct InFlight {
  absl::Time at;
  int64_t order = 0;
  engine::Trigger trigger;
};

class Simulation {
 public:
  Simulation(const Definition& def, const Options& options)
      : def_(def),
        options_(options),
        state_(engine::NewState(def)),
        rng_(options.seed),
        factory_(def.pool.get()),
        action_(def.steps.size()),
        compensation_(def.steps.size()) {
    for (const auto& [name, script] : options.script.steps) {
      const StepSpec* spec = def.FindStep(name);
      if (spec == nullptr) continue;  // BuildScript rejects these
      for (const Outcome& o : script.action) {
        action_[static_cast<size_t>(spec->index)].entries.push_back({o, 0});
      }
      for (const Outcome& o : script.compensation) {
        compensation_[static_cast<size_t>(spec->index)].entries.push_back({o, 0});
      }
    }
  }

  Result Run() {
    Fire({.kind = engine::Trigger::Kind::kStart});
    for (;;) {
      if (engine::IsTerminal(state_.status) || state_.status == engine::SagaStatus::kFailed) {
        break;
      }
      if (limit_hit_ || static_cast<int>(result_.events.size()) >= options_.max_events) {
        result_.stopped = true;
        result_.stop_reason = absl::StrCat("stopped after ", result_.events.size(),
                                           " events (limit ", options_.max_events, ")");
        break;
      }
      auto call = std::min_element(in_flight_.begin(), in_flight_.end(),
                                   [](const InFlight& a, const InFlight& b) {
                                     return a.at != b.at ? a.at < b.at : a.order < b.order;
                                   });
      const bool have_call = call != in_flight_.end();
      const bool have_timer = !timers_.empty();
      if (!have_call && !have_timer) {
        result_.stopped = true;
        result_.stop_reason =
            absl::StrCat("the engine left the saga ", AV(engine::SagaStatusName(state_.status)),
                         " with no call in flight and no wake-up scheduled");
        break;
      }
      if (have_call && (!have_timer || call->at <= *timers_.begin())) {
        now_ = call->at;
        engine::Trigger trigger = std::move(call->trigger);
        in_flight_.erase(call);
        Fire(trigger);
      } else {
        now_ = *timers_.begin();
        timers_.erase(timers_.begin());
        Fire({.kind = engine::Trigger::Kind::kTimer});
      }
    }
    result_.status = state_.status;
    result_.error = state_.error;
    result_.elapsed = now_ - absl::UnixEpoch();
    AddNotes();
    return std::move(result_);
  }

 private:
  void Fire(const engine::Trigger& trigger) {
    engine::Decision decision = engine::Decide(def_, state_, trigger, now_, rng_);
    bool abort_now = false;
    for (const engine::Event& e : decision.events) {
      if (static_cast<int>(result_.events.size()) >= options_.max_events) {
        // The guard: record nothing more and carry out nothing of this decision.
        limit_hit_ = true;
        return;
      }
      engine::Apply(def_, state_, e);
      result_.events.push_back({e, now_ - absl::UnixEpoch()});
      if (e.type == EventType::kStepSucceeded && !abort_sent_ &&
          !options_.script.abort_after.empty() &&
          def_.steps[static_cast<size_t>(e.step)].name == options_.script.abort_after) {
        abort_now = true;
      }
    }
    for (const engine::Command& c : decision.commands) Execute(decision, c);
    if (decision.wake_at != absl::InfiniteFuture()) timers_.insert(decision.wake_at);
    if (abort_now) {
      abort_sent_ = true;
      Fire({.kind = engine::Trigger::Kind::kAbort,
            .reason = absl::StrCat("scripted: --abort-after ", options_.script.abort_after)});
    }
  }

  void Execute(const engine::Decision& decision, const engine::Command& command) {
    const StepSpec& step = def_.steps[static_cast<size_t>(command.step)];
    const bool compensation = command.call == CallKind::kCompensation;
    const CallSpec& call = compensation ? *step.compensation : step.action;
    const EventType started =
        compensation ? EventType::kCompensationStarted : EventType::kStepStarted;

    SentCall sent;
    for (const engine::Event& e : decision.events) {
      if (e.type == started && e.step == command.step && e.attempt == command.attempt) {
        sent.seq = e.seq;
      }
    }
    sent.step = command.step;
    sent.call = command.call;
    sent.attempt = command.attempt;
    sent.method = call.method_name;
    sent.idempotency_key =
        absl::StrCat(AV(kSagaId), "/", step.name, compensation ? "/compensation" : "/action");
    sent.at = now_ - absl::UnixEpoch();

    InFlight done{.at = now_, .order = next_order_++};
    done.trigger = {.kind = engine::Trigger::Kind::kResult,
                    .step = command.step,
                    .call = command.call,
                    .attempt = command.attempt};

    // As Runtime::Invoke: render against the state the decision left, keyed like the runtime.
    definition::RenderContext ctx;
    ctx.input = &options_.input;
    ctx.step_output = [this](std::string_view name) -> const nlohmann::json* {
      const StepSpec* s = def_.FindStep(name);
      if (s == nullptr) return nullptr;
      const nlohmann::json& out = state_.steps[static_cast<size_t>(s->index)].output;
      return out.is_null() ? nullptr : &out;
    };
    ctx.saga_id = kSagaId;
    ctx.saga_key = options_.saga_key;
    ctx.step_name = step.name;
    ctx.step_key = sent.idempotency_key;
    absl::StatusOr<nlohmann::json> request = call.request.Render(ctx);
    absl::Status status;
    if (!request.ok()) {
      status = absl::InvalidArgumentError(
          absl::StrCat("cannot build the request: ", request.status().message()));
    } else {
      sent.request = *request;
      status = CheckFits(call, *request);
    }
    StepCursor& cursor =
        (compensation ? compensation_ : action_)[static_cast<size_t>(command.step)];
    ++cursor.attempts;
    if (!status.ok()) {
      // The invoker refuses it before sending: the participant never sees this attempt.
      sent.error = std::string(status.message());
      sent.outcome = "not sent";
      done.trigger.status = status;
    } else {
      ++cursor.reached;
      const Outcome* o = cursor.Take();
      if (o == nullptr) {
        sent.outcome = "OK";
        done.trigger.output = Response(command.step, command.call);
      } else if (o->kind == Outcome::Kind::kFail) {
        sent.outcome = absl::StrCat(CodeName(o->code), " (scripted)");
        done.trigger.status = absl::Status(o->code, "scripted");
      } else {
        sent.outcome = "timeout";
        done.at = now_ + call.timeout;
        done.trigger.status = absl::DeadlineExceededError(
            absl::StrCat("scripted: no answer within ", absl::FormatDuration(call.timeout)));
      }
    }
    if (compensation) ++result_.compensations;
    result_.calls.push_back(std::move(sent));
    in_flight_.push_back(std::move(done));
  }

  // As the gRPC invoker: a request that does not fit the input message is INVALID_ARGUMENT.
  absl::Status CheckFits(const CallSpec& call, const nlohmann::json& request) {
    if (call.method == nullptr) return absl::OkStatus();
    const pb::Message* prototype = factory_.GetPrototype(call.method->input_type());
    std::unique_ptr<pb::Message> message(prototype->New());
    const std::string text = request.is_null() ? "{}" : request.dump();
    const auto st = pb::util::JsonStringToMessage(text, message.get());
    if (st.ok()) return absl::OkStatus();
    std::string why(st.message().data(), st.message().size());
    std::replace(why.begin(), why.end(), '\n', ' ');
    return absl::InvalidArgumentError(
        absl::StrCat("request does not fit ", call.method->input_type()->full_name(), ": ", why));
  }

  nlohmann::json Response(int step, CallKind kind) {
    const auto key = std::make_pair(step, kind);
    auto it = responses_.find(key);
    if (it != responses_.end()) return it->second;
    const StepSpec& spec = def_.steps[static_cast<size_t>(step)];
    const CallSpec& call = kind == CallKind::kCompensation ? *spec.compensation : spec.action;
    nlohmann::json out = call.method == nullptr ? nlohmann::json::object()
                                                : SyntheticResponse(*call.method, spec.name);
    responses_.emplace(key, out);
    return out;
  }

  void AddNotes() {
    for (size_t i = 0; i < def_.steps.size(); ++i) {
      for (const StepCursor* cursor : {&action_[i], &compensation_[i]}) {
        const char* what = cursor == &action_[i] ? "forward" : "compensation";
        for (const ScriptedOutcome& e : cursor->entries) {
          const bool unused = e.used == 0;
          const bool partly = e.outcome.count > 0 && e.used < e.outcome.count;
          if (!unused && !partly) continue;
          std::string note = absl::StrCat(e.outcome.source, ": ");
          if (unused) {
            absl::StrAppend(&note, "never used");
          } else {
            absl::StrAppend(&note, "used ", e.used, " of ", e.outcome.count, " times");
          }
          absl::StrAppend(&note, "; step '", def_.steps[i].name, "' made ", cursor->attempts, " ",
                          what, cursor->attempts == 1 ? " attempt" : " attempts");
          if (cursor->reached != cursor->attempts) {
            absl::StrAppend(&note, " (", cursor->reached, " reached the participant)");
          }
          result_.notes.push_back(std::move(note));
        }
      }
    }
    if (!options_.script.abort_after.empty() && !abort_sent_) {
      result_.notes.push_back(absl::StrCat("--abort-after ", options_.script.abort_after,
                                           ": step '", options_.script.abort_after,
                                           "' never succeeded, so no abort was requested"));
    }
  }

  const Definition& def_;
  const Options& options_;
  engine::SagaState state_;
  std::mt19937_64 rng_;
  pb::DynamicMessageFactory factory_;
  absl::Time now_ = absl::UnixEpoch();
  std::vector<InFlight> in_flight_;
  std::set<absl::Time> timers_;
  int64_t next_order_ = 0;
  std::vector<StepCursor> action_;
  std::vector<StepCursor> compensation_;
  std::map<std::pair<int, CallKind>, nlohmann::json> responses_;
  bool abort_sent_ = false;
  bool limit_hit_ = false;
  Result result_;
};

// --- formatting ------------------------------------------------------------------------------

std::string Seconds(absl::Duration d) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3fs", absl::ToDoubleSeconds(d));
  return buf;
}

double Millis(absl::Duration d) {
  return static_cast<double>(absl::ToInt64Microseconds(d)) / 1000.0;
}

std::string Shorten(std::string s) {
  if (s.size() <= kMaxShownJson) return s;
  size_t cut = kMaxShownJson - 3;
  // Do not split a UTF-8 sequence.
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  s.resize(cut);
  return s + "...";
}

std::string DetailString(const nlohmann::json& detail, const char* key) {
  auto it = detail.find(key);
  if (it == detail.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

std::string ErrorText(const nlohmann::json& detail) {
  std::string out = DetailString(detail, "code");
  if (std::string m = DetailString(detail, "message"); !m.empty()) {
    absl::StrAppend(&out, " (", m, ")");
  }
  return out;
}

const SentCall* FindCall(const Result& result, int64_t seq) {
  for (const SentCall& c : result.calls) {
    if (c.seq == seq) return &c;
  }
  return nullptr;
}

std::string Describe(const Result& result, const TraceEvent& te) {
  const engine::Event& e = te.event;
  switch (e.type) {
    case EventType::kStepStarted:
    case EventType::kCompensationStarted: {
      const SentCall* c = FindCall(result, e.seq);
      if (c == nullptr) return {};
      std::string out = absl::StrCat("-> ", c->method, " ");
      // Why a request was not sent is the next event of the step.
      if (c->request.is_null() && !c->error.empty()) {
        absl::StrAppend(&out, "(request not built)");
      } else {
        absl::StrAppend(&out, Shorten(c->request.is_null() ? "{}" : c->request.dump()));
        if (!c->error.empty()) absl::StrAppend(&out, "  (not sent)");
      }
      return out;
    }
    case EventType::kStepSucceeded: {
      auto it = e.detail.find("output");
      return it == e.detail.end() ? std::string() : Shorten(it->dump());
    }
    case EventType::kStepRetryScheduled:
    case EventType::kCompensationRetryScheduled: {
      std::string out = ErrorText(e.detail);
      auto it = e.detail.find("retry_at_us");
      if (it != e.detail.end() && it->is_number_integer()) {
        const absl::Duration wait =
            absl::Microseconds(it->get<int64_t>()) - te.at;  // the clock starts at the epoch
        absl::StrAppend(&out, "; retry in ", Seconds(wait));
      }
      return out;
    }
    case EventType::kStepFailed: {
      std::string out = ErrorText(e.detail);
      if (e.detail.value("unknown", false)) absl::StrAppend(&out, "; outcome unknown");
      return out;
    }
    case EventType::kCompensationFailed:
      return ErrorText(e.detail);
    case EventType::kAbortRequested:
    case EventType::kSagaCompensating:
    case EventType::kSagaFailed:
      return DetailString(e.detail, "reason");
    default:
      return {};
  }
}

std::string FinalSummary(const Result& result) {
  std::string out(engine::SagaStatusName(result.status));
  if (result.stopped) {
    absl::StrAppend(&out, " (", result.stop_reason, ")");
  } else if (!result.error.empty()) {
    absl::StrAppend(&out, " (", result.error, ")");
  }
  return out;
}

}  // namespace

std::string_view FlagName(ScriptFlag::Kind kind) {
  switch (kind) {
    case ScriptFlag::Kind::kFail:
      return "--fail";
    case ScriptFlag::Kind::kTimeout:
      return "--timeout";
    case ScriptFlag::Kind::kCompFail:
      return "--comp-fail";
    case ScriptFlag::Kind::kCompTimeout:
      return "--comp-timeout";
    case ScriptFlag::Kind::kAbortAfter:
      return "--abort-after";
  }
  return "--?";
}

bool ParseCodeName(std::string_view name, absl::StatusCode* code) {
  const std::string upper = absl::AsciiStrToUpper(AV(name));
  for (absl::StatusCode c : kCodes) {
    if (CodeName(c) == upper) {
      *code = c;
      return true;
    }
  }
  return false;
}

absl::StatusOr<Script> BuildScript(const Definition& def, const std::vector<ScriptFlag>& flags) {
  Script script;
  for (const ScriptFlag& flag : flags) {
    const std::string_view value = flag.value;
    if (flag.kind == ScriptFlag::Kind::kAbortAfter) {
      if (def.FindStep(value) == nullptr) return FlagError(flag, UnknownStep(def, value));
      if (!script.abort_after.empty()) {
        return FlagError(flag, absl::StrCat("only one --abort-after is allowed (already '",
                                            script.abort_after, "')"));
      }
      script.abort_after = flag.value;
      continue;
    }
    const bool fail =
        flag.kind == ScriptFlag::Kind::kFail || flag.kind == ScriptFlag::Kind::kCompFail;
    const bool compensation =
        flag.kind == ScriptFlag::Kind::kCompFail || flag.kind == ScriptFlag::Kind::kCompTimeout;
    Outcome outcome;
    outcome.kind = fail ? Outcome::Kind::kFail : Outcome::Kind::kTimeout;
    outcome.code = fail ? absl::StatusCode::kUnknown : absl::StatusCode::kDeadlineExceeded;
    outcome.source = absl::StrCat(AV(FlagName(flag.kind)), " ", flag.value);
    std::string_view step_name;
    if (fail) {
      const size_t eq = value.find('=');
      if (eq == std::string_view::npos || eq == 0 || eq + 1 == value.size()) {
        return FlagError(flag, "expected STEP=CODE[xN], e.g. charge=UNAVAILABLEx2");
      }
      step_name = value.substr(0, eq);
      std::string_view code = value.substr(eq + 1);
      std::string_view head, digits;
      if (SplitCount(code, &head, &digits)) {
        if (absl::Status s = ParseCount(flag, digits, &outcome.count); !s.ok()) return s;
        code = head;
      }
      if (def.FindStep(step_name) == nullptr) return FlagError(flag, UnknownStep(def, step_name));
      if (absl::AsciiStrToUpper(AV(code)) == "OK") {
        return FlagError(flag, "OK is not a failure: attempts that are not scripted succeed");
      }
      if (!ParseCodeName(code, &outcome.code)) {
        return FlagError(flag,
                         absl::StrCat("unknown code '", AV(code), "' (codes: ", CodeList(), ")"));
      }
    } else {
      step_name = value;
      std::string_view head, digits;
      if (def.FindStep(value) == nullptr && SplitCount(value, &head, &digits) &&
          def.FindStep(head) != nullptr) {
        if (absl::Status s = ParseCount(flag, digits, &outcome.count); !s.ok()) return s;
        step_name = head;
      }
      if (step_name.empty()) return FlagError(flag, "expected STEP[xN], e.g. chargex1");
      if (def.FindStep(step_name) == nullptr) return FlagError(flag, UnknownStep(def, step_name));
    }
    const StepSpec& spec = *def.FindStep(step_name);
    if (compensation && !spec.compensation.has_value()) {
      return FlagError(flag, absl::StrCat("step '", spec.name, "' has no compensation"));
    }
    StepScript& ss = script.steps[spec.name];
    std::vector<Outcome>& list = compensation ? ss.compensation : ss.action;
    if (!list.empty() && list.back().count == 0) {
      return FlagError(flag, absl::StrCat("never used: '", list.back().source,
                                          "' already answers every attempt (add xN to it)"));
    }
    list.push_back(std::move(outcome));
  }
  return script;
}

nlohmann::json SyntheticResponse(const pb::MethodDescriptor& method, std::string_view step) {
  pb::DynamicMessageFactory factory(method.file()->pool());
  std::unique_ptr<pb::Message> message(factory.GetPrototype(method.output_type())->New());
  FillMessage(message.get(), step, 0);
  // As the gRPC invoker renders responses.
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  if (!pb::util::MessageToJsonString(*message, &text, options).ok()) {
    return nlohmann::json::object();
  }
  nlohmann::json out = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return out.is_discarded() ? nlohmann::json::object() : out;
}

absl::StatusOr<Result> Simulate(const Definition& def, const Options& options) {
  if (!options.input.is_object()) {
    return absl::InvalidArgumentError("--input: the saga input must be a JSON object");
  }
  return Simulation(def, options).Run();
}

std::string FormatTrace(const Definition& def, const Result& result) {
  size_t time_width = 0, type_width = 0, step_width = 0, attempt_width = 0;
  for (const TraceEvent& te : result.events) {
    time_width = std::max(time_width, Seconds(te.at).size() + 1);
    type_width = std::max(type_width, engine::EventTypeName(te.event.type).size());
    if (te.event.step >= 0) {
      step_width = std::max(step_width, def.steps[static_cast<size_t>(te.event.step)].name.size());
      attempt_width = std::max(attempt_width, absl::StrCat("#", te.event.attempt).size());
    }
  }
  std::string out;
  for (const TraceEvent& te : result.events) {
    const engine::Event& e = te.event;
    std::string line = absl::StrCat("+", Seconds(te.at));
    line.resize(time_width, ' ');
    absl::StrAppend(&line, "  ", AV(engine::EventTypeName(e.type)));
    std::string detail = Describe(result, te);
    if (e.step >= 0 || !detail.empty()) {
      line.resize(time_width + 2 + type_width, ' ');
      std::string step = e.step >= 0 ? def.steps[static_cast<size_t>(e.step)].name : "";
      std::string attempt = e.step >= 0 ? absl::StrCat("#", e.attempt) : "";
      step.resize(step_width, ' ');
      attempt.resize(attempt_width, ' ');
      if (e.step >= 0) {
        absl::StrAppend(&line, "  ", step, "  ", attempt);
      }
      if (!detail.empty()) absl::StrAppend(&line, "  ", detail);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  for (const std::string& note : result.notes) absl::StrAppend(&out, "note: ", note, "\n");
  absl::StrAppend(&out, "final: ", FinalSummary(result), "  calls: ", result.calls.size(),
                  "  compensations: ", result.compensations,
                  "  virtual time: ", Seconds(result.elapsed), "\n");
  return out;
}

nlohmann::json TraceJson(const Definition& def, const Options& options, const Result& result) {
  nlohmann::json events = nlohmann::json::array();
  for (const TraceEvent& te : result.events) {
    const engine::Event& e = te.event;
    events.push_back({
        {"seq", e.seq},
        {"type", engine::EventTypeName(e.type)},
        {"step", e.step >= 0 ? nlohmann::json(def.steps[static_cast<size_t>(e.step)].name)
                             : nlohmann::json()},
        {"attempt", e.attempt},
        {"at_ms", Millis(te.at)},
        {"detail", e.detail},
    });
  }
  nlohmann::json requests = nlohmann::json::array();
  for (const SentCall& c : result.calls) {
    nlohmann::json r = {
        {"seq", c.seq},
        {"step", def.steps[static_cast<size_t>(c.step)].name},
        {"call", c.call == CallKind::kCompensation ? "compensation" : "action"},
        {"attempt", c.attempt},
        {"at_ms", Millis(c.at)},
        {"method", c.method},
        {"idempotency_key", c.idempotency_key},
        {"request", c.request},
        {"outcome", c.outcome},
    };
    if (!c.error.empty()) r["error"] = c.error;
    requests.push_back(std::move(r));
  }
  return {
      {"definition", def.name},
      {"saga_id", kSagaId},
      {"seed", options.seed},
      {"input", options.input},
      {"events", std::move(events)},
      {"requests", std::move(requests)},
      {"notes", result.notes},
      {"final",
       {
           {"status", engine::SagaStatusName(result.status)},
           {"error", result.error},
           {"calls", result.calls.size()},
           {"compensations", result.compensations},
           {"virtual_time_ms", Millis(result.elapsed)},
           {"stopped", result.stopped},
           {"stop_reason", result.stop_reason},
       }},
  };
}

}  // namespace saga::sim
