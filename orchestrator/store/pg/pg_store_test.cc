// Tests of PgStore, PgListener and their helpers against a real PostgreSQL (label `pg`):
//   pg_virtualenv -v 15 build/orchestrator/store/pg/pg_store_test
// Each test gets a fresh database (TestDatabase). Without a reachable server the tests fail.
#include "orchestrator/store/pg/pg_store.h"

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pqxx/pqxx>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "orchestrator/store/pg/array_literal.h"
#include "orchestrator/store/pg/conninfo.h"
#include "orchestrator/store/pg/migrations.h"
#include "orchestrator/store/pg/pg_listener.h"
#include "orchestrator/store/pg/testing/test_database.h"

namespace saga::store::pg {
namespace {

using engine::Event;
using engine::EventType;
using engine::SagaStatus;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAreArray;

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const absl::Status assert_ok_status_ = (expr);            \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (false)

#define EXPECT_OK(expr)                                       \
  do {                                                        \
    const absl::Status expect_ok_status_ = (expr);            \
    EXPECT_TRUE(expect_ok_status_.ok()) << expect_ok_status_; \
  } while (false)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(SAGA_TEST_CONCAT_(statusor_, __LINE__), lhs, expr)
#define SAGA_TEST_CONCAT_INNER_(a, b) a##b
#define SAGA_TEST_CONCAT_(a, b) SAGA_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  ASSERT_TRUE(statusor.ok()) << statusor.status();      \
  lhs = std::move(statusor).value()

std::string NewId() {
  static absl::Mutex mu;
  static absl::BitGen gen;
  absl::MutexLock lock(&mu);
  const uint64_t hi = absl::Uniform<uint64_t>(gen);
  const uint64_t lo = absl::Uniform<uint64_t>(gen);
  return absl::StrFormat("%08x-%04x-4%03x-%04x-%012x", hi >> 32, (hi >> 16) & 0xffff, hi & 0xfff,
                         0x8000 | ((lo >> 48) & 0x3fff), lo & 0xffffffffffffULL);
}

Event MakeEvent(int64_t seq, EventType type, int step = -1, int attempt = 0,
                nlohmann::json detail = nlohmann::json::object()) {
  Event event;
  event.seq = seq;
  event.type = type;
  event.step = step;
  event.attempt = attempt;
  event.detail = std::move(detail);
  return event;
}

NewSaga MakeNewSaga(const std::string& owner, absl::Duration lease, std::string key = "",
                    std::string input_hash = "hash-1") {
  NewSaga saga;
  saga.id = NewId();
  saga.definition_name = "order";
  saga.definition_version = 1;
  saga.input_json = R"({"order_id": 42})";
  saga.input_hash = std::move(input_hash);
  saga.idempotency_key = std::move(key);
  saga.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  saga.owner = owner;
  saga.lease = lease;
  saga.events = {MakeEvent(1, EventType::kSagaStarted)};
  return saga;
}

class PgStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<TestDatabase>> db = TestDatabase::Create();
    ASSERT_TRUE(db.ok()) << "PostgreSQL is required for these tests: " << db.status();
    db_ = *std::move(db);
    store_ = NewStore();
    ASSERT_NE(store_, nullptr);
  }

  void TearDown() override {
    store_.reset();
    db_.reset();
  }

  std::unique_ptr<PgStore> NewStore(PgStoreOptions options = {}) {
    options.url = db_->url();
    absl::StatusOr<std::unique_ptr<PgStore>> store = PgStore::Create(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  absl::StatusOr<StartResult> Start(NewSaga saga) {
    absl::Notification done;
    absl::StatusOr<StartResult> result;
    store_->StartSaga(std::move(saga), [&](absl::StatusOr<StartResult> r) {
      result = std::move(r);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  absl::Status CommitSync(Transition transition) {
    absl::Notification done;
    absl::Status result;
    store_->Commit(std::move(transition), [&](absl::Status s) {
      result = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  // Creates a saga owned by `owner` and returns its id.
  std::string StartOwned(const std::string& owner, absl::Duration lease = absl::Hours(1)) {
    NewSaga saga = MakeNewSaga(owner, lease);
    std::string id = saga.id;
    absl::StatusOr<StartResult> result = Start(std::move(saga));
    EXPECT_TRUE(result.ok()) << result.status();
    return id;
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<PgStore> store_;
};

// ---------------------------------------------------------------------------------------------
// Helpers without a database.

TEST(ArrayLiteralTest, EncodesElements) {
  ArrayLiteral literal;
  literal.Add("a");
  literal.Add(std::string_view("b\"c\\d"));
  literal.AddNull();
  literal.Add(int64_t{-7});
  literal.AddBool(true);
  literal.Add("");
  absl::StatusOr<std::string> text = literal.Build();
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, R"({"a","b\"c\\d",NULL,-7,t,""})");
  EXPECT_EQ(literal.size(), 6u);
  EXPECT_EQ(*ArrayLiteral().Build(), "{}");
}

TEST(ArrayLiteralTest, RejectsNulBytes) {
  ArrayLiteral literal;
  literal.Add(std::string_view("a\0b", 3));
  EXPECT_EQ(literal.Build().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConninfoTest, KeyValueForm) {
  EXPECT_FALSE(IsConnectionUri("host=/tmp port=5432"));
  EXPECT_EQ(WithDatabase("", "db1"), "dbname='db1'");
  EXPECT_EQ(WithDatabase("host=/tmp port=5432", "db1"), "host=/tmp port=5432 dbname='db1'");
  EXPECT_EQ(WithConnectionParameter("host=x", "application_name", "it's"),
            R"(host=x application_name='it\'s')");
  EXPECT_TRUE(HasConnectionParameter("host=x connect_timeout = 3", "connect_timeout"));
  EXPECT_FALSE(HasConnectionParameter("host=x", "connect_timeout"));
}

TEST(ConninfoTest, UriForm) {
  EXPECT_TRUE(IsConnectionUri("postgresql://u:p@h:5/db"));
  EXPECT_TRUE(IsConnectionUri("postgres://h"));
  EXPECT_EQ(WithDatabase("postgresql://u:p@h:5/old?sslmode=disable", "new"),
            "postgresql://u:p@h:5/new?sslmode=disable");
  EXPECT_EQ(WithDatabase("postgresql://h", "new"), "postgresql://h/new");
  EXPECT_EQ(WithDatabase("postgresql://h/?dbname=x&a=b", "new"), "postgresql://h/new?a=b");
  EXPECT_EQ(WithDatabase("postgresql://", "new"), "postgresql:///new");
  EXPECT_EQ(WithConnectionParameter("postgresql://h/db", "connect_timeout", "5"),
            "postgresql://h/db?connect_timeout=5");
  EXPECT_EQ(WithConnectionParameter("postgresql://h/db?a=b", "k", "x y"),
            "postgresql://h/db?a=b&k=x%20y");
  EXPECT_TRUE(HasConnectionParameter("postgresql://h/db?connect_timeout=2", "connect_timeout"));
}

TEST(MigrationsTest, EmbeddedInOrder) {
  std::span<const Migration> migrations = EmbeddedMigrations();
  ASSERT_FALSE(migrations.empty());
  EXPECT_EQ(migrations[0].version, 1);
  EXPECT_EQ(migrations[0].name, "init");
  EXPECT_THAT(std::string(migrations[0].sql), HasSubstr("CREATE TABLE sagas"));
}

// ---------------------------------------------------------------------------------------------
// Array literals through PostgreSQL.

TEST_F(PgStoreTest, ArrayLiteralRoundTripsHostileStrings) {
  const std::vector<std::optional<std::string>> values = {"plain",
                                                          "",
                                                          "\"",
                                                          "\\",
                                                          "\\\"",
                                                          "{",
                                                          "}",
                                                          "{a,b}",
                                                          ",",
                                                          "a,b",
                                                          " padded ",
                                                          "NULL",
                                                          "null",
                                                          std::nullopt,
                                                          "'; DROP TABLE sagas;--",
                                                          "üñíçødé ✓ 😀",
                                                          "tab\tnew\nline",
                                                          "\\N",
                                                          "$1",
                                                          "{\"json\": [1, 2]}"};
  ASSERT_OK_AND_ASSIGN(std::string literal, EncodeArrayLiteral(values));
  pqxx::connection conn(db_->url());
  pqxx::work txn(conn);
  pqxx::result rows = txn.exec_params(
      "SELECT v IS NULL, coalesce(v, '') FROM unnest($1::text[]) WITH ORDINALITY AS t(v, n) "
      "ORDER BY n",
      literal);
  ASSERT_EQ(rows.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(rows[i][0].as<bool>(), !values[i].has_value()) << i;
    if (values[i].has_value()) {
      EXPECT_EQ(rows[i][1].as<std::string>(), *values[i]) << i;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Migrations.

TEST_F(PgStoreTest, MigrationsAppliedFromEmpty) {
  ASSERT_OK_AND_ASSIGN(std::string max_version,
                       db_->QueryValue("SELECT max(version) FROM saga_schema_migrations"));
  EXPECT_EQ(max_version, absl::StrCat(EmbeddedMigrations().back().version));
  ASSERT_OK_AND_ASSIGN(std::string tables,
                       db_->QueryValue("SELECT count(*) FROM information_schema.tables WHERE "
                                       "table_name IN ('sagas', 'saga_events', "
                                       "'saga_definitions')"));
  EXPECT_EQ(tables, "3");
}

TEST_F(PgStoreTest, MigrationsTwiceAreANoOp) {
  std::unique_ptr<PgStore> second = NewStore();
  ASSERT_NE(second, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string count,
                       db_->QueryValue("SELECT count(*) FROM saga_schema_migrations"));
  EXPECT_EQ(count, absl::StrCat(EmbeddedMigrations().size()));
}

TEST(PgMigrationsTest, ConcurrentCreateOnFreshDatabase) {
  absl::StatusOr<std::unique_ptr<TestDatabase>> db = TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << "PostgreSQL is required for these tests: " << db.status();
  std::vector<absl::Status> results(3);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      PgStoreOptions options;
      options.url = (*db)->url();
      absl::StatusOr<std::unique_ptr<PgStore>> store = PgStore::Create(options);
      results[i] = store.status();
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : results) EXPECT_TRUE(status.ok()) << status;
  absl::StatusOr<std::string> count =
      (*db)->QueryValue("SELECT count(*) FROM saga_schema_migrations");
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(*count, absl::StrCat(EmbeddedMigrations().size()));
}

TEST_F(PgStoreTest, NewerSchemaVersionRefusesToStart) {
  ASSERT_OK(db_->Execute(
      "INSERT INTO saga_schema_migrations (version, name) VALUES (9999, 'from_the_future')"));
  PgStoreOptions options;
  options.url = db_->url();
  absl::StatusOr<std::unique_ptr<PgStore>> store = PgStore::Create(options);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("9999"));
}

TEST(PgConnectTest, UnreachableServerIsUnavailable) {
  PgStoreOptions options;
  options.url = "host=127.0.0.1 port=1 user=nobody password=secret-password-xyz";
  options.connect_timeout = absl::Seconds(2);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<PgStore>> store = PgStore::Create(options);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_THAT(std::string(store.status().message()), ::testing::Not(HasSubstr("secret")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(PgConnectTest, BadOptions) {
  PgStoreOptions options;
  options.pool_size = 0;
  EXPECT_EQ(PgStore::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Definitions.

TEST_F(PgStoreTest, Definitions) {
  DefinitionRecord v1;
  v1.name = "order";
  v1.spec_json = R"({"name":"order","steps":[{"name":"reserve"}]})";
  v1.content_hash = "h1";
  v1.descriptor_set = std::string("\x00\x01\xff binary \\ '", 14);
  ASSERT_OK_AND_ASSIGN(PutDefinitionResult put1, store_->PutDefinition(v1));
  EXPECT_EQ(put1.version, 1);
  EXPECT_TRUE(put1.created);

  ASSERT_OK_AND_ASSIGN(PutDefinitionResult again, store_->PutDefinition(v1));
  EXPECT_EQ(again.version, 1);
  EXPECT_FALSE(again.created);

  DefinitionRecord v2 = v1;
  v2.spec_json = R"({"name":"order","steps":[]})";
  v2.content_hash = "h2";
  ASSERT_OK_AND_ASSIGN(PutDefinitionResult put2, store_->PutDefinition(v2));
  EXPECT_EQ(put2.version, 2);
  EXPECT_TRUE(put2.created);
  // Re-registering old content gives its old version.
  ASSERT_OK_AND_ASSIGN(PutDefinitionResult old, store_->PutDefinition(v1));
  EXPECT_EQ(old.version, 1);
  EXPECT_FALSE(old.created);

  DefinitionRecord other = v1;
  other.name = "another";
  ASSERT_OK_AND_ASSIGN(PutDefinitionResult put_other, store_->PutDefinition(other));
  EXPECT_EQ(put_other.version, 1);

  ASSERT_OK_AND_ASSIGN(DefinitionRecord latest, store_->GetDefinition("order", 0));
  EXPECT_EQ(latest.version, 2);
  EXPECT_EQ(latest.content_hash, "h2");
  EXPECT_EQ(nlohmann::json::parse(latest.spec_json), nlohmann::json::parse(v2.spec_json));
  EXPECT_GT(latest.created_at, absl::Now() - absl::Minutes(5));

  ASSERT_OK_AND_ASSIGN(DefinitionRecord first, store_->GetDefinition("order", 1));
  EXPECT_EQ(first.descriptor_set, v1.descriptor_set);
  EXPECT_EQ(nlohmann::json::parse(first.spec_json), nlohmann::json::parse(v1.spec_json));

  EXPECT_EQ(store_->GetDefinition("order", 3).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetDefinition("missing", 0).status().code(), absl::StatusCode::kNotFound);

  ASSERT_OK_AND_ASSIGN(std::vector<DefinitionRecord> all, store_->ListDefinitions());
  ASSERT_THAT(all, SizeIs(2));
  EXPECT_EQ(all[0].name, "another");
  EXPECT_EQ(all[0].version, 1);
  EXPECT_EQ(all[1].name, "order");
  EXPECT_EQ(all[1].version, 2);

  DefinitionRecord bad = v1;
  bad.spec_json = "{not json";
  EXPECT_EQ(store_->PutDefinition(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PgStoreTest, ConcurrentPutDefinitionAgreesOnVersions) {
  std::vector<absl::StatusOr<PutDefinitionResult>> results(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      DefinitionRecord record;
      record.name = "racy";
      record.spec_json = absl::StrFormat(R"({"n": %d})", i % 2);
      record.content_hash = absl::StrCat("hash", i % 2);
      results[i] = store_->PutDefinition(record);
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::map<std::string, std::set<int>> versions_by_hash;
  int created = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    versions_by_hash[absl::StrCat("hash", i % 2)].insert(results[i]->version);
    created += results[i]->created ? 1 : 0;
  }
  EXPECT_EQ(created, 2);
  EXPECT_THAT(versions_by_hash["hash0"], SizeIs(1));
  EXPECT_THAT(versions_by_hash["hash1"], SizeIs(1));
  EXPECT_NE(*versions_by_hash["hash0"].begin(), *versions_by_hash["hash1"].begin());
}

// ---------------------------------------------------------------------------------------------
// StartSaga.

TEST_F(PgStoreTest, StartSagaStoresRowAndEvents) {
  NewSaga saga = MakeNewSaga("replica-a", absl::Minutes(1), "key-1");
  nlohmann::json hostile = {
      {"big", 9007199254740993LL},
      {"negative", -9223372036854775807LL},
      {"unsigned", 18446744073709551615ULL},
      {"float", 0.1},
      {"quote", "he said \"hi\" and left \\ a backslash"},
      {"sql", "'; DROP TABLE sagas;--"},
      {"unicode", "Grüße ✓ 😀 \u00e9"},
      {"braces", "{a,b}"},
      {"nested", {{"list", {1, "two", nullptr, true}}, {"empty", nlohmann::json::object()}}},
  };
  saga.events.push_back(MakeEvent(2, EventType::kStepStarted, 0, 1, hostile));
  saga.events.push_back(MakeEvent(3, EventType::kStepSucceeded, 0, 1, {{"output", "ok"}}));
  saga.input_json = R"({"order_id": 9007199254740993, "note": "'\"\\"})";
  const std::string id = saga.id;

  ASSERT_OK_AND_ASSIGN(StartResult result, Start(saga));
  EXPECT_EQ(result.saga_id, id);
  EXPECT_TRUE(result.created);
  EXPECT_EQ(result.fence, 1);

  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(id));
  EXPECT_EQ(row.id, id);
  EXPECT_EQ(row.definition_name, "order");
  EXPECT_EQ(row.definition_version, 1);
  EXPECT_EQ(row.status, SagaStatus::kRunning);
  EXPECT_EQ(nlohmann::json::parse(row.input_json), nlohmann::json::parse(saga.input_json));
  EXPECT_EQ(nlohmann::json::parse(row.input_json)["order_id"].get<int64_t>(), 9007199254740993LL);
  EXPECT_EQ(row.idempotency_key, "key-1");
  EXPECT_EQ(row.traceparent, saga.traceparent);
  EXPECT_EQ(row.error, "");
  EXPECT_EQ(row.last_seq, 3);
  EXPECT_EQ(row.fence, 1);
  EXPECT_EQ(row.owner, "replica-a");
  EXPECT_FALSE(row.abort_requested);
  EXPECT_FALSE(row.retry_requested);
  EXPECT_LT(absl::AbsDuration(row.created_at - absl::Now()), absl::Minutes(5));
  EXPECT_EQ(row.created_at, row.updated_at);

  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, store_->ReadEvents(id, 0));
  ASSERT_THAT(events, SizeIs(3));
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq, saga.events[i].seq);
    EXPECT_EQ(events[i].type, saga.events[i].type);
    EXPECT_EQ(events[i].step, saga.events[i].step);
    EXPECT_EQ(events[i].attempt, saga.events[i].attempt);
    EXPECT_EQ(events[i].detail, saga.events[i].detail) << events[i].detail.dump();
    EXPECT_NE(events[i].recorded_at, absl::InfinitePast());
  }
  EXPECT_EQ(events[1].detail["big"].get<int64_t>(), 9007199254740993LL);
  EXPECT_TRUE(events[0].detail.is_object());

  ASSERT_OK_AND_ASSIGN(std::vector<Event> tail, store_->ReadEvents(id, 2));
  ASSERT_THAT(tail, SizeIs(1));
  EXPECT_EQ(tail[0].seq, 3);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> none, store_->ReadEvents(id, 3));
  EXPECT_THAT(none, IsEmpty());
  EXPECT_EQ(store_->ReadEvents(NewId(), 0).status().code(), absl::StatusCode::kNotFound);

  ASSERT_OK_AND_ASSIGN(std::string tables, db_->QueryValue("SELECT count(*) FROM sagas"));
  EXPECT_EQ(tables, "1");
}

TEST_F(PgStoreTest, IdempotentStart) {
  NewSaga first = MakeNewSaga("a", absl::Minutes(1), "k", "hash-x");
  ASSERT_OK_AND_ASSIGN(StartResult created, Start(first));
  EXPECT_TRUE(created.created);

  NewSaga same = MakeNewSaga("b", absl::Minutes(1), "k", "hash-x");
  ASSERT_OK_AND_ASSIGN(StartResult found, Start(same));
  EXPECT_FALSE(found.created);
  EXPECT_EQ(found.saga_id, first.id);
  EXPECT_EQ(found.fence, 1);

  NewSaga different = MakeNewSaga("b", absl::Minutes(1), "k", "hash-y");
  absl::StatusOr<StartResult> conflict = Start(different);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(conflict.status().message()),
              HasSubstr("idempotency key 'k' was used with a different input"));
  EXPECT_EQ(store_->GetSaga(different.id).status().code(), absl::StatusCode::kNotFound);

  // The same key under another definition is another saga.
  NewSaga other_definition = MakeNewSaga("b", absl::Minutes(1), "k", "hash-y");
  other_definition.definition_name = "refund";
  ASSERT_OK_AND_ASSIGN(StartResult other, Start(other_definition));
  EXPECT_TRUE(other.created);

  // No key never conflicts.
  ASSERT_OK_AND_ASSIGN(StartResult no_key_1, Start(MakeNewSaga("a", absl::Minutes(1))));
  ASSERT_OK_AND_ASSIGN(StartResult no_key_2, Start(MakeNewSaga("a", absl::Minutes(1))));
  EXPECT_TRUE(no_key_1.created);
  EXPECT_TRUE(no_key_2.created);

  // Re-sending the very same start (same id) finds it.
  ASSERT_OK_AND_ASSIGN(StartResult resent, Start(first));
  EXPECT_FALSE(resent.created);
  EXPECT_EQ(resent.saga_id, first.id);
  // Another saga's id with another input is refused.
  NewSaga stolen_id = MakeNewSaga("a", absl::Minutes(1), "", "other-hash");
  stolen_id.id = first.id;
  EXPECT_EQ(Start(stolen_id).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(PgStoreTest, WriteOnCallerRunsOnTheSubmittingThreadOnlyWhenAsked) {
  // Each answer is awaited before the test goes on (its locals must outlive the callback even
  // when the answer comes late, on another thread); *_inline says whether it came inside the
  // call. Asked, with nothing else to write: written and answered inside the call.
  NewSaga here = MakeNewSaga("o", absl::Minutes(1));
  here.write_on_caller = true;
  std::thread::id answered_on;
  absl::Notification started;
  store_->StartSaga(here, [&](absl::StatusOr<StartResult> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_TRUE(r->created);
    }
    answered_on = std::this_thread::get_id();
    started.Notify();
  });
  const bool start_inline = started.HasBeenNotified();
  started.WaitForNotification();
  EXPECT_TRUE(start_inline);
  EXPECT_EQ(answered_on, std::this_thread::get_id());

  // A transition asked to, likewise (the store is idle again: the write above is over); its
  // event continues the history.
  Transition t;
  t.saga_id = here.id;
  t.owner = "o";
  t.fence = 1;
  t.events = {MakeEvent(static_cast<int64_t>(here.events.size()) + 1, EventType::kSagaCompleted)};
  t.status = engine::SagaStatus::kCompleted;
  t.release = true;
  t.write_on_caller = true;
  absl::Status committed = absl::UnknownError("not answered");
  absl::Notification commit_done;
  store_->Commit(t, [&](absl::Status s) {
    committed = s;
    commit_done.Notify();
  });
  const bool commit_inline = commit_done.HasBeenNotified();
  commit_done.WaitForNotification();
  EXPECT_TRUE(commit_inline);
  ASSERT_OK(committed);
  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(here.id));
  EXPECT_EQ(row.status, engine::SagaStatus::kCompleted);

  // Not asked: a committer writes it, and answers on its own thread.
  NewSaga there = MakeNewSaga("o", absl::Minutes(1));
  absl::Notification done;
  store_->StartSaga(there, [&](absl::StatusOr<StartResult> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    answered_on = std::this_thread::get_id();
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_NE(answered_on, std::this_thread::get_id());
}

TEST_F(PgStoreTest, SameKeyTwiceInOneBatchBehavesSequentially) {
  // Enqueued back to back, these share a batch (or land in consecutive ones): same result.
  // One committer, so that they are taken in queue order: with two, a committer still opening
  // its connection may let the other write a later start first (starts of different ids may
  // race, and then either one may win the key).
  PgStoreOptions one_committer;
  one_committer.committers = 1;
  store_ = NewStore(one_committer);
  ASSERT_NE(store_, nullptr);
  NewSaga a = MakeNewSaga("o", absl::Minutes(1), "dup", "h1");
  NewSaga b = MakeNewSaga("o", absl::Minutes(1), "dup", "h1");
  NewSaga c = MakeNewSaga("o", absl::Minutes(1), "dup", "h2");
  NewSaga d = a;  // the same id again
  absl::Mutex mu;
  std::vector<absl::StatusOr<StartResult>> results(4);
  absl::Notification all_done;
  std::atomic<int> remaining{4};
  int i = 0;
  for (NewSaga* saga : {&a, &b, &c, &d}) {
    store_->StartSaga(*saga, [&, index = i++](absl::StatusOr<StartResult> r) {
      {
        absl::MutexLock lock(&mu);
        results[index] = std::move(r);
      }
      if (--remaining == 0) all_done.Notify();
    });
  }
  all_done.WaitForNotification();
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  EXPECT_TRUE(results[0]->created);
  EXPECT_EQ(results[0]->saga_id, a.id);
  ASSERT_TRUE(results[1].ok()) << results[1].status();
  EXPECT_FALSE(results[1]->created);
  EXPECT_EQ(results[1]->saga_id, a.id);
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(results[3].ok()) << results[3].status();
  EXPECT_FALSE(results[3]->created);
  EXPECT_EQ(results[3]->saga_id, a.id);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, store_->ReadEvents(a.id, 0));
  EXPECT_THAT(events, SizeIs(1));
}

TEST_F(PgStoreTest, ConcurrentStartsWithOneKeyCreateOneSaga) {
  constexpr int kThreads = 50;
  std::vector<absl::StatusOr<StartResult>> results(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      results[i] =
          Start(MakeNewSaga(absl::StrCat("replica-", i), absl::Minutes(1), "shared", "same-input"));
    });
  }
  for (std::thread& thread : threads) thread.join();
  int created = 0;
  std::set<std::string> ids;
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    created += result->created ? 1 : 0;
    ids.insert(result->saga_id);
  }
  EXPECT_EQ(created, 1);
  EXPECT_THAT(ids, SizeIs(1));
  ASSERT_OK_AND_ASSIGN(std::string count, db_->QueryValue("SELECT count(*) FROM sagas"));
  EXPECT_EQ(count, "1");
}

TEST_F(PgStoreTest, BadInputFailsOnlyItsOwnOp) {
  NewSaga nul_input = MakeNewSaga("o", absl::Minutes(1));
  nul_input.input_json = R"({"a": "x\u0000y"})";
  NewSaga nul_detail = MakeNewSaga("o", absl::Minutes(1));
  nul_detail.events[0].detail = {{"text", std::string("a\0b", 3)}};
  NewSaga bad_json = MakeNewSaga("o", absl::Minutes(1));
  bad_json.input_json = "{";
  NewSaga bad_id = MakeNewSaga("o", absl::Minutes(1));
  bad_id.id = "not-a-uuid";
  NewSaga bad_seq = MakeNewSaga("o", absl::Minutes(1));
  bad_seq.events[0].seq = 5;
  NewSaga bad_utf8 = MakeNewSaga("o", absl::Minutes(1));
  bad_utf8.traceparent = "\xff\xfe";  // passes validation; PostgreSQL rejects it
  NewSaga good = MakeNewSaga("o", absl::Minutes(1));

  std::vector<NewSaga> sagas = {nul_input, nul_detail, bad_json, bad_id, bad_seq, bad_utf8, good};
  std::vector<absl::StatusOr<StartResult>> results(sagas.size());
  absl::Mutex mu;
  std::atomic<int> remaining{static_cast<int>(sagas.size())};
  absl::Notification done;
  for (size_t i = 0; i < sagas.size(); ++i) {
    store_->StartSaga(sagas[i], [&, i](absl::StatusOr<StartResult> r) {
      {
        absl::MutexLock lock(&mu);
        results[i] = std::move(r);
      }
      if (--remaining == 0) done.Notify();
    });
  }
  done.WaitForNotification();
  for (size_t i = 0; i + 1 < sagas.size(); ++i) {
    EXPECT_EQ(results[i].status().code(), absl::StatusCode::kInvalidArgument)
        << i << ": " << results[i].status();
  }
  EXPECT_THAT(std::string(results[3].status().message()),
              HasSubstr("saga id 'not-a-uuid' is not a UUID"));
  ASSERT_TRUE(results.back().ok()) << results.back().status();
  EXPECT_TRUE(results.back()->created);
  ASSERT_OK_AND_ASSIGN(std::string count, db_->QueryValue("SELECT count(*) FROM sagas"));
  EXPECT_EQ(count, "1");
}

// ---------------------------------------------------------------------------------------------
// Commit.

Transition MakeTransition(const std::string& id, const std::string& owner, int64_t fence,
                          std::vector<Event> events) {
  Transition transition;
  transition.saga_id = id;
  transition.owner = owner;
  transition.fence = fence;
  transition.events = std::move(events);
  return transition;
}

TEST_F(PgStoreTest, FencedCommit) {
  const std::string id = StartOwned("a");
  ASSERT_OK(CommitSync(MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kStepStarted, 0, 1)})));
  ASSERT_OK_AND_ASSIGN(SagaRow after_good, store_->GetSaga(id));
  EXPECT_EQ(after_good.last_seq, 2);
  EXPECT_GE(after_good.updated_at, after_good.created_at);

  // Stale fence: nothing changes.
  absl::Status stale =
      CommitSync(MakeTransition(id, "a", 0, {MakeEvent(3, EventType::kStepSucceeded, 0, 1)}));
  EXPECT_EQ(stale.code(), absl::StatusCode::kAborted) << stale;
  EXPECT_THAT(std::string(stale.message()), HasSubstr("fence 0 is stale"));
  // Wrong owner: nothing changes.
  absl::Status not_owner =
      CommitSync(MakeTransition(id, "b", 1, {MakeEvent(3, EventType::kStepSucceeded, 0, 1)}));
  EXPECT_EQ(not_owner.code(), absl::StatusCode::kAborted) << not_owner;
  // Out-of-sequence events (a duplicate seq): nothing changes.
  absl::Status duplicate_seq =
      CommitSync(MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kStepSucceeded, 0, 1)}));
  EXPECT_EQ(duplicate_seq.code(), absl::StatusCode::kAborted) << duplicate_seq;

  ASSERT_OK_AND_ASSIGN(SagaRow unchanged, store_->GetSaga(id));
  EXPECT_EQ(unchanged.last_seq, 2);
  EXPECT_EQ(unchanged.updated_at, after_good.updated_at);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, store_->ReadEvents(id, 0));
  EXPECT_THAT(events, SizeIs(2));
  EXPECT_EQ(events[1].type, EventType::kStepStarted);
  EXPECT_EQ(store_->fenced_writes(), 3);

  // Missing saga.
  EXPECT_EQ(CommitSync(MakeTransition(NewId(), "a", 1, {})).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CommitSync(MakeTransition("bad", "a", 1, {})).code(),
            absl::StatusCode::kInvalidArgument);

  // Terminal transition releases the saga.
  Transition done = MakeTransition(id, "a", 1, {MakeEvent(3, EventType::kSagaCompleted)});
  done.status = SagaStatus::kCompleted;
  done.release = true;
  ASSERT_OK(CommitSync(done));
  ASSERT_OK_AND_ASSIGN(SagaRow completed, store_->GetSaga(id));
  EXPECT_EQ(completed.status, SagaStatus::kCompleted);
  EXPECT_EQ(completed.owner, "");
  EXPECT_EQ(completed.last_seq, 3);
  // Released: the old owner can no longer write.
  EXPECT_EQ(
      CommitSync(MakeTransition(id, "a", 1, {MakeEvent(4, EventType::kSagaCompleted)})).code(),
      absl::StatusCode::kAborted);
}

TEST_F(PgStoreTest, BatchMixingStaleAndGoodTransitions) {
  const std::string good_id = StartOwned("a");
  const std::string stale_id = StartOwned("a");
  std::vector<Transition> transitions = {
      MakeTransition(stale_id, "a", 7, {MakeEvent(2, EventType::kStepStarted, 0, 1)}),
      MakeTransition(good_id, "a", 1, {MakeEvent(2, EventType::kStepStarted, 0, 1)}),
      // A second transition of the same saga in the same batch continues the first.
      MakeTransition(good_id, "a", 1, {MakeEvent(3, EventType::kStepSucceeded, 0, 1)}),
  };
  std::vector<absl::Status> results(transitions.size());
  absl::Mutex mu;
  std::atomic<int> remaining{static_cast<int>(transitions.size())};
  absl::Notification done;
  for (size_t i = 0; i < transitions.size(); ++i) {
    store_->Commit(transitions[i], [&, i](absl::Status s) {
      {
        absl::MutexLock lock(&mu);
        results[i] = std::move(s);
      }
      if (--remaining == 0) done.Notify();
    });
  }
  done.WaitForNotification();
  EXPECT_EQ(results[0].code(), absl::StatusCode::kAborted) << results[0];
  EXPECT_TRUE(results[1].ok()) << results[1];
  EXPECT_TRUE(results[2].ok()) << results[2];
  ASSERT_OK_AND_ASSIGN(std::vector<Event> good_events, store_->ReadEvents(good_id, 0));
  EXPECT_THAT(good_events, SizeIs(3));
  ASSERT_OK_AND_ASSIGN(std::vector<Event> stale_events, store_->ReadEvents(stale_id, 0));
  EXPECT_THAT(stale_events, SizeIs(1));
}

TEST_F(PgStoreTest, PipelinedWritesOfOneSagaKeepTheirOrder) {
  // Start and many transitions of one saga, submitted without waiting, while other sagas'
  // writes keep both committers busy: each must apply in submission order.
  constexpr int kTransitions = 40;
  NewSaga saga = MakeNewSaga("a", absl::Hours(1));
  const std::string id = saga.id;
  absl::Mutex mu;
  std::vector<int> completion_order;
  std::vector<absl::Status> statuses(kTransitions + 1);
  std::atomic<int> remaining{kTransitions + 1};
  absl::Notification done;
  auto finish = [&](int index, absl::Status status) {
    {
      absl::MutexLock lock(&mu);
      completion_order.push_back(index);
      statuses[index] = std::move(status);
    }
    if (--remaining == 0) done.Notify();
  };
  store_->StartSaga(saga, [&](absl::StatusOr<StartResult> r) { finish(0, r.status()); });
  for (int i = 1; i <= kTransitions; ++i) {
    store_->StartSaga(MakeNewSaga("a", absl::Hours(1)), [](absl::StatusOr<StartResult>) {});
    Transition t = MakeTransition(id, "a", 1, {MakeEvent(i + 1, EventType::kStepStarted, 0, i)});
    store_->Commit(std::move(t), [&, i](absl::Status s) { finish(i, std::move(s)); });
    // Small gaps make many small batches, written by both committers at once.
    absl::SleepFor(absl::Microseconds(300));
  }
  done.WaitForNotification();
  for (int i = 0; i <= kTransitions; ++i) EXPECT_TRUE(statuses[i].ok()) << i << statuses[i];
  std::vector<int> expected(kTransitions + 1);
  for (int i = 0; i <= kTransitions; ++i) expected[i] = i;
  EXPECT_EQ(completion_order, expected);
  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(id));
  EXPECT_EQ(row.last_seq, kTransitions + 1);
}

TEST_F(PgStoreTest, TransitionErrorAndRequestFlags) {
  const std::string id = StartOwned("a");
  ASSERT_OK_AND_ASSIGN(SagaRow flagged, store_->RequestAbort(id, "operator said so"));
  EXPECT_TRUE(flagged.abort_requested);
  EXPECT_EQ(flagged.abort_reason, "operator said so");
  ASSERT_OK_AND_ASSIGN(std::vector<OwnedSaga> owned, store_->RenewLeases("a", absl::Minutes(1)));
  ASSERT_THAT(owned, SizeIs(1));
  EXPECT_TRUE(owned[0].abort_requested);

  Transition compensating = MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kAbortRequested)});
  compensating.status = SagaStatus::kCompensating;
  compensating.clear_requests = true;
  compensating.error = "aborted by operator";
  ASSERT_OK(CommitSync(compensating));
  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(id));
  EXPECT_EQ(row.status, SagaStatus::kCompensating);
  EXPECT_FALSE(row.abort_requested);
  EXPECT_EQ(row.error, "aborted by operator");
  EXPECT_EQ(row.owner, "a");

  // An empty error keeps the recorded one.
  ASSERT_OK(CommitSync(MakeTransition(id, "a", 1, {})));
  ASSERT_OK_AND_ASSIGN(SagaRow kept, store_->GetSaga(id));
  EXPECT_EQ(kept.error, "aborted by operator");
  EXPECT_EQ(kept.last_seq, 2);
}

// ---------------------------------------------------------------------------------------------
// Ownership.

TEST_F(PgStoreTest, ClaimAfterLeaseExpiry) {
  const std::string leased = StartOwned("a", absl::Hours(1));
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> nothing,
                       store_->ClaimDue("b", absl::Minutes(1), 10));
  EXPECT_THAT(nothing, IsEmpty());

  const std::string expiring = StartOwned("a", absl::Milliseconds(1));
  ASSERT_OK(
      CommitSync(MakeTransition(expiring, "a", 1, {MakeEvent(2, EventType::kStepStarted, 0, 1)})));
  absl::SleepFor(absl::Milliseconds(20));
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> claimed,
                       store_->ClaimDue("b", absl::Minutes(1), 10));
  ASSERT_THAT(claimed, SizeIs(1));
  EXPECT_EQ(claimed[0].row.id, expiring);
  EXPECT_EQ(claimed[0].row.owner, "b");
  EXPECT_EQ(claimed[0].row.fence, 2);
  ASSERT_THAT(claimed[0].events, SizeIs(2));
  EXPECT_EQ(claimed[0].events[0].seq, 1);
  EXPECT_EQ(claimed[0].events[1].seq, 2);
  EXPECT_EQ(claimed[0].events[1].type, EventType::kStepStarted);

  // The old owner is fenced out; the new one writes.
  absl::Status old_owner =
      CommitSync(MakeTransition(expiring, "a", 1, {MakeEvent(3, EventType::kStepSucceeded, 0, 1)}));
  EXPECT_EQ(old_owner.code(), absl::StatusCode::kAborted) << old_owner;
  ASSERT_OK(CommitSync(
      MakeTransition(expiring, "b", 2, {MakeEvent(3, EventType::kStepSucceeded, 0, 1)})));

  // Now leased by b: not claimable.
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> again, store_->ClaimDue("c", absl::Minutes(1), 10));
  EXPECT_THAT(again, IsEmpty());
  ASSERT_OK_AND_ASSIGN(SagaRow still_a, store_->GetSaga(leased));
  EXPECT_EQ(still_a.owner, "a");
}

TEST_F(PgStoreTest, ZeroLeaseIsClaimableAtOnce) {
  const std::string id = StartOwned("a", absl::ZeroDuration());
  absl::SleepFor(absl::Milliseconds(2));
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> claimed,
                       store_->ClaimDue("b", absl::Minutes(1), 10));
  ASSERT_THAT(claimed, SizeIs(1));
  EXPECT_EQ(claimed[0].row.id, id);
}

TEST_F(PgStoreTest, ConcurrentClaimersNeverShareASaga) {
  constexpr int kSagas = 40;
  std::vector<std::string> ids;
  for (int i = 0; i < kSagas; ++i) ids.push_back(StartOwned("creator", absl::ZeroDuration()));
  absl::SleepFor(absl::Milliseconds(5));

  absl::Mutex mu;
  std::vector<std::string> claimed_ids;
  std::vector<std::thread> threads;
  std::atomic<bool> failed{false};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      while (true) {
        absl::StatusOr<std::vector<ClaimedSaga>> claimed =
            store_->ClaimDue(absl::StrCat("claimer-", t), absl::Hours(1), 3);
        if (!claimed.ok()) {
          failed = true;
          return;
        }
        if (claimed->empty()) return;
        absl::MutexLock lock(&mu);
        for (const ClaimedSaga& saga : *claimed) {
          EXPECT_EQ(saga.row.fence, 2);
          EXPECT_THAT(saga.events, SizeIs(1));
          claimed_ids.push_back(saga.row.id);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_FALSE(failed);
  EXPECT_THAT(claimed_ids, UnorderedElementsAreArray(ids));
}

TEST_F(PgStoreTest, RenewReleaseAndReclaim) {
  const std::string one = StartOwned("a");
  const std::string two = StartOwned("a");
  const std::string other = StartOwned("z");
  ASSERT_OK_AND_ASSIGN(std::vector<OwnedSaga> owned, store_->RenewLeases("a", absl::Hours(1)));
  std::vector<std::string> owned_ids;
  for (const OwnedSaga& saga : owned) owned_ids.push_back(saga.id);
  EXPECT_THAT(owned_ids, UnorderedElementsAreArray({one, two}));

  // Reclaim bumps the fence of the named sagas this owner holds, and only those.
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> reclaimed,
                       store_->Reclaim("a", absl::Hours(1), {one, other, NewId()}));
  ASSERT_THAT(reclaimed, SizeIs(1));
  EXPECT_EQ(reclaimed[0].row.id, one);
  EXPECT_EQ(reclaimed[0].row.fence, 2);
  EXPECT_THAT(reclaimed[0].events, SizeIs(1));
  EXPECT_EQ(CommitSync(MakeTransition(one, "a", 1, {})).code(), absl::StatusCode::kAborted);
  ASSERT_OK(CommitSync(MakeTransition(one, "a", 2, {})));
  EXPECT_EQ(store_->Reclaim("a", absl::Hours(1), {"nope"}).status().code(),
            absl::StatusCode::kInvalidArgument);

  ASSERT_OK(store_->ReleaseAll("a"));
  ASSERT_OK_AND_ASSIGN(std::vector<OwnedSaga> none, store_->RenewLeases("a", absl::Hours(1)));
  EXPECT_THAT(none, IsEmpty());
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> claimed, store_->ClaimDue("b", absl::Hours(1), 10));
  std::vector<std::string> claimed_ids;
  for (const ClaimedSaga& saga : claimed) claimed_ids.push_back(saga.row.id);
  EXPECT_THAT(claimed_ids, UnorderedElementsAreArray({one, two}));
}

// ---------------------------------------------------------------------------------------------
// Operator requests.

TEST_F(PgStoreTest, RequestAbortRules) {
  EXPECT_EQ(store_->RequestAbort(NewId(), "x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->RequestAbort("1234", "x").status().code(), absl::StatusCode::kInvalidArgument);

  const std::string id = StartOwned("a");
  ASSERT_OK_AND_ASSIGN(SagaRow first, store_->RequestAbort(id, "first reason"));
  EXPECT_TRUE(first.abort_requested);
  ASSERT_OK_AND_ASSIGN(SagaRow second, store_->RequestAbort(id, "second reason"));
  EXPECT_EQ(second.abort_reason, "first reason");

  Transition done = MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kSagaCompleted)});
  done.status = SagaStatus::kCompleted;
  done.release = true;
  ASSERT_OK(CommitSync(done));
  absl::StatusOr<SagaRow> ended = store_->RequestAbort(id, "too late");
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ended.status().message()), HasSubstr("has already ended (COMPLETED)"));

  // An unowned, parked saga becomes due when abort is requested.
  const std::string parked = StartOwned("a");
  Transition park = MakeTransition(parked, "a", 1, {});
  park.release = true;
  ASSERT_OK(CommitSync(park));
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> before, store_->ClaimDue("b", absl::Hours(1), 10));
  EXPECT_THAT(before, IsEmpty());
  ASSERT_OK(store_->RequestAbort(parked, "wake up").status());
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> after, store_->ClaimDue("b", absl::Hours(1), 10));
  ASSERT_THAT(after, SizeIs(1));
  EXPECT_EQ(after[0].row.id, parked);
  EXPECT_TRUE(after[0].row.abort_requested);
}

TEST_F(PgStoreTest, RequestRetryRules) {
  EXPECT_EQ(store_->RequestRetry(NewId()).status().code(), absl::StatusCode::kNotFound);
  const std::string id = StartOwned("a");
  EXPECT_EQ(store_->RequestRetry(id).status().code(), absl::StatusCode::kFailedPrecondition);

  Transition failed = MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kSagaFailed)});
  failed.status = SagaStatus::kFailed;
  failed.error = "refund failed";
  failed.release = true;
  ASSERT_OK(CommitSync(failed));
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> none, store_->ClaimDue("b", absl::Hours(1), 10));
  EXPECT_THAT(none, IsEmpty());

  ASSERT_OK_AND_ASSIGN(SagaRow retried, store_->RequestRetry(id));
  EXPECT_TRUE(retried.retry_requested);
  EXPECT_EQ(retried.status, SagaStatus::kFailed);
  ASSERT_OK_AND_ASSIGN(std::vector<ClaimedSaga> claimed, store_->ClaimDue("b", absl::Hours(1), 10));
  ASSERT_THAT(claimed, SizeIs(1));
  EXPECT_TRUE(claimed[0].row.retry_requested);
  EXPECT_EQ(claimed[0].row.error, "refund failed");

  Transition resumed =
      MakeTransition(id, "b", claimed[0].row.fence, {MakeEvent(3, EventType::kRetryRequested)});
  resumed.status = SagaStatus::kCompensating;
  resumed.clear_requests = true;
  ASSERT_OK(CommitSync(resumed));
  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(id));
  EXPECT_FALSE(row.retry_requested);
  EXPECT_EQ(row.status, SagaStatus::kCompensating);
}

// ---------------------------------------------------------------------------------------------
// Retention.

TEST_F(PgStoreTest, PurgeFinishedDeletesOnlySagasThatEndedLongEnoughAgo) {
  // Starts a saga with `key`, writes two more events and ends it with `status` (RUNNING: not
  // ended), then moves its times back: created `created_ago`, last written `ended_ago`.
  auto make = [&](const std::string& key, SagaStatus status, absl::Duration created_ago,
                  absl::Duration ended_ago) {
    NewSaga saga = MakeNewSaga("a", absl::Hours(1), key);
    const std::string id = saga.id;
    EXPECT_OK(Start(std::move(saga)).status());
    Transition step = MakeTransition(id, "a", 1,
                                     {MakeEvent(2, EventType::kStepStarted, 0, 1),
                                      MakeEvent(3, EventType::kStepSucceeded, 0, 1)});
    if (status != SagaStatus::kRunning) {
      step.events.push_back(
          MakeEvent(4, status == SagaStatus::kCompleted     ? EventType::kSagaCompleted
                       : status == SagaStatus::kCompensated ? EventType::kSagaCompensated
                                                            : EventType::kSagaFailed));
      step.status = status;
      step.release = true;
    }
    EXPECT_OK(CommitSync(step));
    pqxx::connection conn(db_->url());
    pqxx::work txn(conn);
    txn.exec_params(
        "UPDATE sagas SET created_at = now() - $2::bigint * interval '1 second',"
        " updated_at = now() - $3::bigint * interval '1 second' WHERE id = $1",
        id, absl::ToInt64Seconds(created_ago), absl::ToInt64Seconds(ended_ago));
    txn.commit();
    return id;
  };
  auto event_rows = [&](const std::string& id) {
    pqxx::connection conn(db_->url());
    pqxx::work txn(conn);
    return txn.exec_params1("SELECT count(*) FROM saga_events WHERE saga_id = $1", id)[0]
        .as<int64_t>();
  };
  const absl::Duration kDay = absl::Hours(24);
  const std::string completed = make("k-completed", SagaStatus::kCompleted, 3 * kDay, 2 * kDay);
  const std::string compensated = make("", SagaStatus::kCompensated, 3 * kDay, 2 * kDay);
  const std::string failed = make("k-failed", SagaStatus::kFailed, 3 * kDay, 2 * kDay);
  const std::string running = make("k-running", SagaStatus::kRunning, 3 * kDay, 2 * kDay);
  const std::string recent =
      make("k-recent", SagaStatus::kCompleted, absl::Hours(1), absl::Minutes(30));
  // Created long ago but ended within the retention: kept, the age counts from the end.
  const std::string ended_lately =
      make("k-lately", SagaStatus::kCompleted, 3 * kDay, absl::Hours(2));
  ASSERT_EQ(event_rows(completed), 4);

  ASSERT_OK_AND_ASSIGN(PurgeResult purged, store_->PurgeFinished(kDay, 1000));
  EXPECT_EQ(purged.sagas, 2);
  EXPECT_EQ(purged.events, 8);
  EXPECT_EQ(store_->sagas_purged(), 2);
  for (const std::string& id : {completed, compensated}) {
    EXPECT_EQ(store_->GetSaga(id).status().code(), absl::StatusCode::kNotFound) << id;
    EXPECT_EQ(store_->ReadEvents(id, 0).status().code(), absl::StatusCode::kNotFound) << id;
    EXPECT_EQ(event_rows(id), 0) << id;
  }
  for (const std::string& id : {failed, running, recent, ended_lately}) {
    ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(id));
    EXPECT_EQ(event_rows(id), row.status == SagaStatus::kRunning ? 3 : 4) << id;
  }
  // Nothing more is old enough.
  ASSERT_OK_AND_ASSIGN(PurgeResult again, store_->PurgeFinished(kDay, 1000));
  EXPECT_EQ(again.sagas, 0);
  EXPECT_EQ(again.events, 0);

  // The deleted saga's idempotency key starts a new saga; a kept one still finds its saga.
  NewSaga reuse = MakeNewSaga("a", absl::Hours(1), "k-completed");
  const std::string reuse_id = reuse.id;
  ASSERT_OK_AND_ASSIGN(StartResult reused, Start(std::move(reuse)));
  EXPECT_TRUE(reused.created);
  EXPECT_EQ(reused.saga_id, reuse_id);
  NewSaga keep = MakeNewSaga("a", absl::Hours(1), "k-failed");
  ASSERT_OK_AND_ASSIGN(StartResult kept, Start(std::move(keep)));
  EXPECT_FALSE(kept.created);
  EXPECT_EQ(kept.saga_id, failed);

  // A shorter age takes the ones that ended lately too; FAILED and RUNNING never go.
  ASSERT_OK_AND_ASSIGN(PurgeResult shorter, store_->PurgeFinished(absl::Minutes(10), 1000));
  EXPECT_EQ(shorter.sagas, 2);
  EXPECT_OK(store_->GetSaga(failed).status());
  EXPECT_OK(store_->GetSaga(running).status());
  EXPECT_OK(store_->GetSaga(reuse_id).status());  // still running, and new
}

TEST_F(PgStoreTest, PurgeFinishedTakesAtMostLimitPerCall) {
  for (int i = 0; i < 5; ++i) {
    NewSaga saga = MakeNewSaga("a", absl::Hours(1));
    const std::string id = saga.id;
    ASSERT_OK(Start(std::move(saga)).status());
    Transition end = MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kSagaCompleted)});
    end.status = SagaStatus::kCompleted;
    end.release = true;
    ASSERT_OK(CommitSync(end));
  }
  // Age zero: every saga that has ended (before this statement's start) goes.
  std::vector<int64_t> batches;
  for (int i = 0; i < 4; ++i) {
    ASSERT_OK_AND_ASSIGN(PurgeResult r, store_->PurgeFinished(absl::ZeroDuration(), 2));
    batches.push_back(r.sagas);
  }
  EXPECT_THAT(batches, ElementsAre(2, 2, 1, 0));

  EXPECT_EQ(store_->PurgeFinished(-absl::Seconds(1), 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PurgeFinished(absl::Hours(1), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Reads.

TEST_F(PgStoreTest, ListSagasFiltersAndPages) {
  constexpr int kSagas = 24;
  std::set<std::string> all_ids;
  std::set<std::string> refund_ids;
  std::set<std::string> completed_order_ids;
  std::atomic<int> remaining{kSagas};
  std::atomic<int> failures{0};
  absl::Notification started;
  for (int i = 0; i < kSagas; ++i) {
    NewSaga saga = MakeNewSaga("a", absl::Hours(1));
    if (i % 3 == 0) saga.definition_name = "refund";
    if (i % 4 == 0) saga.status = SagaStatus::kCompleted;
    all_ids.insert(saga.id);
    if (saga.definition_name == "refund") refund_ids.insert(saga.id);
    if (saga.definition_name == "order" && saga.status == SagaStatus::kCompleted) {
      completed_order_ids.insert(saga.id);
    }
    // Sagas of one batch share created_at (now() of the transaction): pagination must
    // tie-break on the id.
    store_->StartSaga(saga, [&](absl::StatusOr<StartResult> r) {
      if (!r.ok()) ++failures;
      if (--remaining == 0) started.Notify();
    });
  }
  started.WaitForNotification();
  ASSERT_EQ(failures, 0);

  auto collect = [&](ListFilter filter) {
    std::vector<SagaRow> rows;
    while (true) {
      absl::StatusOr<std::vector<SagaRow>> page = store_->ListSagas(filter);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok() || page->empty()) break;
      EXPECT_LE(page->size(), static_cast<size_t>(filter.limit));
      rows.insert(rows.end(), page->begin(), page->end());
      filter.before = std::make_pair(page->back().created_at, page->back().id);
    }
    return rows;
  };

  ListFilter filter;
  filter.limit = 5;
  std::vector<SagaRow> rows = collect(filter);
  std::vector<std::string> ids;
  for (const SagaRow& row : rows) ids.push_back(row.id);
  EXPECT_THAT(ids, UnorderedElementsAreArray(all_ids));  // no duplicates, no gaps
  for (size_t i = 1; i < rows.size(); ++i) {
    EXPECT_TRUE(rows[i - 1].created_at > rows[i].created_at ||
                (rows[i - 1].created_at == rows[i].created_at && rows[i - 1].id > rows[i].id));
  }
  for (const SagaRow& row : rows) EXPECT_LE(row.created_at, rows.front().created_at);

  ListFilter by_definition;
  by_definition.limit = 2;
  by_definition.definition = "refund";
  ids.clear();
  for (const SagaRow& row : collect(by_definition)) ids.push_back(row.id);
  EXPECT_THAT(ids, UnorderedElementsAreArray(refund_ids));

  ListFilter by_both;
  by_both.limit = 3;
  by_both.definition = "order";
  by_both.status = SagaStatus::kCompleted;
  ids.clear();
  for (const SagaRow& row : collect(by_both)) ids.push_back(row.id);
  EXPECT_THAT(ids, UnorderedElementsAreArray(completed_order_ids));

  ListFilter by_status;
  by_status.status = SagaStatus::kFailed;
  ASSERT_OK_AND_ASSIGN(std::vector<SagaRow> failed, store_->ListSagas(by_status));
  EXPECT_THAT(failed, IsEmpty());

  ListFilter bad_cursor;
  bad_cursor.before = std::make_pair(absl::Now(), std::string("nope"));
  EXPECT_EQ(store_->ListSagas(bad_cursor).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PgStoreTest, InvalidIdsAreInvalidArgument) {
  for (const std::string& id :
       std::vector<std::string>{"", "x", "'; DROP TABLE sagas;--", "7f3e-not-a-uuid",
                                "00000000-0000-0000-0000-00000000000g",
                                std::string("00000000-0000-0000-0000-00000000000\0", 36)}) {
    EXPECT_EQ(store_->GetSaga(id).status().code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_EQ(store_->ReadEvents(id, 0).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->RequestRetry(id).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Upper-case UUIDs are accepted and normalized.
  const std::string id = StartOwned("a");
  std::string upper = id;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(upper));
  EXPECT_EQ(row.id, id);
}

TEST_F(PgStoreTest, Ping) {
  EXPECT_TRUE(store_->Ping().ok());
  EXPECT_EQ(store_->pool_in_use(), 0);
}

// ---------------------------------------------------------------------------------------------
// Group commit.

TEST_F(PgStoreTest, GroupCommitBatches) {
  constexpr int kOps = 200;
  const std::string owned = StartOwned("a");
  const int64_t batches_before = store_->batches_committed();
  const int64_t ops_before = store_->ops_committed();

  std::atomic<int> remaining{kOps};
  std::atomic<int> failures{0};
  absl::Notification done;
  auto finish = [&](bool ok) {
    if (!ok) ++failures;
    if (--remaining == 0) done.Notify();
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOps / 4; ++i) {
        if (t == 0 && i < 10) {
          // Heartbeat transitions of one saga, in order (no events).
          store_->Commit(MakeTransition(owned, "a", 1, {}),
                         [&](absl::Status s) { finish(s.ok()); });
        } else {
          store_->StartSaga(MakeNewSaga("a", absl::Hours(1)),
                            [&](absl::StatusOr<StartResult> r) { finish(r.ok()); });
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done.WaitForNotification();
  EXPECT_EQ(failures, 0);
  const int64_t batches = store_->batches_committed() - batches_before;
  const int64_t ops = store_->ops_committed() - ops_before;
  EXPECT_EQ(ops, kOps);
  EXPECT_LT(batches, ops);
  EXPECT_GE(batches, 1);
}

TEST_F(PgStoreTest, ShutdownFlushesQueuedWrites) {
  std::atomic<int> ok{0};
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) {
    NewSaga saga = MakeNewSaga("a", absl::Hours(1));
    ids.push_back(saga.id);
    store_->StartSaga(saga, [&](absl::StatusOr<StartResult> r) { ok += r.ok() ? 1 : 0; });
  }
  store_->Shutdown();
  EXPECT_EQ(ok, 30);
  absl::StatusOr<StartResult> late = Start(MakeNewSaga("a", absl::Hours(1)));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store_->GetSaga(ids[0]).status().code(), absl::StatusCode::kUnavailable);
  std::unique_ptr<PgStore> reopened = NewStore();
  ASSERT_NE(reopened, nullptr);
  for (const std::string& id : ids) EXPECT_TRUE(reopened->GetSaga(id).ok()) << id;
}

TEST_F(PgStoreTest, PoolExhaustionIsUnavailable) {
  PgStoreOptions options;
  options.pool_size = 1;
  options.acquire_timeout = absl::Milliseconds(100);
  std::unique_ptr<PgStore> small = NewStore(options);
  ASSERT_NE(small, nullptr);
  // Hold the only connection: a callback runs on the committer thread after COMMIT, when the
  // connection is back; so block a synchronous call from inside a claimed transaction instead,
  // by locking the sagas table from another session and letting ClaimDue wait on it.
  const std::string id = StartOwned("a", absl::ZeroDuration());
  pqxx::connection locker(db_->url());
  pqxx::work lock_txn(locker);
  lock_txn.exec("LOCK TABLE sagas IN ACCESS EXCLUSIVE MODE");
  std::thread blocked([&] { (void)small->ClaimDue("b", absl::Hours(1), 1); });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(small->pool_in_use(), 1);
  EXPECT_EQ(small->Ping().code(), absl::StatusCode::kUnavailable);
  lock_txn.abort();
  blocked.join();
  EXPECT_TRUE(small->Ping().ok());
  (void)id;
}

// ---------------------------------------------------------------------------------------------
// Listener.

TEST_F(PgStoreTest, ListenerReceivesWakeups) {
  absl::StatusOr<std::unique_ptr<PgListener>> listener =
      PgListener::Create(db_->url(), "saga_wake");
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_EQ(PgListener::Create(db_->url(), "Bad Channel").status().code(),
            absl::StatusCode::kInvalidArgument);

  absl::Mutex mu;
  std::vector<std::string> payloads;
  std::atomic<bool> stop{false};
  std::thread runner([&] {
    (*listener)->Run(
        [&](std::string payload) {
          absl::MutexLock lock(&mu);
          payloads.push_back(std::move(payload));
        },
        stop);
  });
  const std::string id = StartOwned("a");
  ASSERT_OK(store_->RequestAbort(id, "stop").status());
  ASSERT_OK(store_->ReleaseAll("a"));
  {
    absl::MutexLock lock(&mu);
    auto received = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return payloads.size() >= 2; };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&received), absl::Seconds(5)));
    EXPECT_THAT(payloads, ElementsAre(id, ""));
  }

  // Kill the listener's connection: it reconnects, says "" (poll now), and listens again.
  ASSERT_OK(
      db_->Execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND query LIKE 'LISTEN%'"));
  {
    absl::MutexLock lock(&mu);
    auto reconnected = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return payloads.size() >= 3; };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&reconnected), absl::Seconds(10)));
    EXPECT_THAT(payloads, ElementsAre(id, "", ""));
  }
  const std::string other = StartOwned("a");
  ASSERT_OK(store_->RequestAbort(other, "again").status());
  {
    absl::MutexLock lock(&mu);
    auto received = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return payloads.size() >= 4; };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&received), absl::Seconds(5)));
    EXPECT_THAT(payloads, ElementsAre(id, "", "", other));
  }

  const absl::Time stop_at = absl::Now();
  stop = true;
  runner.join();
  EXPECT_LT(absl::Now() - stop_at, absl::Milliseconds(400));
}

TEST_F(PgStoreTest, RecoversFromKilledConnections) {
  const std::string id = StartOwned("a");
  // Several pooled connections, then all of them killed by the server.
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] { EXPECT_TRUE(store_->GetSaga(id).ok()); });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_OK(db_->Execute(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
      "WHERE datname = current_database() AND application_name = 'saga-orchestrator'"));
  absl::SleepFor(absl::Milliseconds(50));
  ASSERT_OK_AND_ASSIGN(SagaRow row, store_->GetSaga(id));
  EXPECT_EQ(row.id, id);
  ASSERT_OK(CommitSync(MakeTransition(id, "a", 1, {MakeEvent(2, EventType::kStepStarted)})));
  EXPECT_TRUE(store_->Ping().ok());
}

}  // namespace
}  // namespace saga::store::pg
