#include "orchestrator/store/pg/testing/test_database.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <thread>
#include <utility>

#include <gtest/gtest.h>
#include <pqxx/pqxx>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "orchestrator/store/pg/conninfo.h"

namespace saga::store::pg {
namespace {

// Databases kept created ahead of time, so that a test does not wait for CREATE DATABASE.
constexpr size_t kPrefetch = 2;

std::string BaseUrl() {
  const char* url = std::getenv("SAGA_TEST_DATABASE_URL");
  return url == nullptr ? std::string() : std::string(url);
}

std::string WithTimeout(const std::string& conninfo) {
  if (HasConnectionParameter(conninfo, "connect_timeout")) return conninfo;
  return WithConnectionParameter(conninfo, "connect_timeout", "5");
}

// Runs one statement outside a transaction (CREATE/DROP DATABASE need that).
absl::Status RunOnMaintenance(const std::string& base_url, const std::string& statement) {
  try {
    pqxx::connection conn(WithTimeout(base_url));
    pqxx::nontransaction txn(conn);
    txn.exec(statement);
    return absl::OkStatus();
  } catch (const pqxx::broken_connection& e) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach PostgreSQL for the tests (set SAGA_TEST_DATABASE_URL, or run the test "
        "under `pg_virtualenv -v 15 <test binary>`): ",
        e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("test database: ", e.what()));
  }
}

absl::StatusOr<std::string> CreateDatabase(const std::string& base_url) {
  static absl::Mutex gen_mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  uint64_t suffix;
  {
    absl::MutexLock lock(&gen_mu);
    suffix = absl::Uniform<uint64_t>(*gen);
  }
  // The name is ours (hex digits only), so it needs no quoting.
  std::string name = absl::StrFormat("saga_test_%016x", suffix);
  absl::Status status = RunOnMaintenance(base_url, absl::StrCat("CREATE DATABASE ", name));
  if (!status.ok()) return status;
  return name;
}

void DropDatabase(const std::string& base_url, const std::string& name) {
  absl::Status status =
      RunOnMaintenance(base_url, absl::StrCat("DROP DATABASE IF EXISTS ", name, " WITH (FORCE)"));
  if (!status.ok()) {
    std::fprintf(stderr, "warning: could not drop test database %s: %s\n", name.c_str(),
                 std::string(status.message()).c_str());
  }
}

// Creates databases ahead of time and drops finished ones, on one background thread, so that
// tests overlap with that work. Everything left is dropped at exit.
class Factory {
 public:
  static Factory& Get() {
    static Factory* factory = new Factory(BaseUrl());
    return *factory;
  }

  const std::string& base_url() const { return base_url_; }

  // Drops what is left; afterwards databases are created and dropped synchronously.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopped_ = true;
    }
    if (worker_.joinable()) worker_.join();
    std::deque<std::string> names;
    {
      absl::MutexLock lock(&mu_);
      names.swap(ready_);
      names.insert(names.end(), to_drop_.begin(), to_drop_.end());
      to_drop_.clear();
    }
    for (const std::string& name : names) DropDatabase(base_url_, name);
  }

  absl::StatusOr<std::string> Take() {
    // Prefetch only what later tests of this process may use: none when ctest runs each test
    // in its own process.
    const int tests_to_run = ::testing::UnitTest::GetInstance()->test_to_run_count();
    {
      absl::MutexLock lock(&mu_);
      ++takes_;
      tests_to_run_ = tests_to_run;
      if (!stopped_ && !failed_) {
        StartWorkerLocked();
        if (!ready_.empty()) {
          std::string name = std::move(ready_.front());
          ready_.pop_front();
          return name;
        }
      }
    }
    return CreateDatabase(base_url_);  // reports why, if the server is unreachable
  }

  void Release(std::string name) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopped_) {
        StartWorkerLocked();
        to_drop_.push_back(std::move(name));
        return;
      }
    }
    DropDatabase(base_url_, name);
  }

 private:
  explicit Factory(std::string base_url) : base_url_(std::move(base_url)) {}

  // How many databases to keep ready.
  size_t PrefetchLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int later_tests = tests_to_run_ - takes_;
    return later_tests <= 0 ? 0 : std::min(kPrefetch, static_cast<size_t>(later_tests));
  }

  void StartWorkerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!worker_.joinable()) worker_ = std::thread([this] { Work(); });
  }

  void Work() {
    while (true) {
      std::string drop;
      {
        absl::MutexLock lock(&mu_);
        auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopped_ || !to_drop_.empty() || (!failed_ && ready_.size() < PrefetchLocked());
        };
        mu_.Await(absl::Condition(&has_work));
        if (stopped_) return;
        if (!to_drop_.empty()) {
          drop = std::move(to_drop_.front());
          to_drop_.pop_front();
        }
      }
      if (!drop.empty()) {
        DropDatabase(base_url_, drop);
        continue;
      }
      absl::StatusOr<std::string> created = CreateDatabase(base_url_);
      absl::MutexLock lock(&mu_);
      if (created.ok()) {
        ready_.push_back(*std::move(created));
      } else {
        failed_ = true;  // Take() creates synchronously and reports the error
      }
    }
  }

  const std::string base_url_;
  absl::Mutex mu_;
  std::deque<std::string> ready_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> to_drop_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  int takes_ ABSL_GUARDED_BY(mu_) = 0;
  int tests_to_run_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread worker_;
};

// Drops the leftover databases after the last test, while libpq still works (at exit,
// OpenSSL's own cleanup may already have run).
class DropLeftoverDatabases : public ::testing::Environment {
 public:
  void TearDown() override { Factory::Get().Stop(); }
};

[[maybe_unused]] ::testing::Environment* const kDropLeftoverDatabases =
    ::testing::AddGlobalTestEnvironment(new DropLeftoverDatabases);

}  // namespace

absl::StatusOr<std::unique_ptr<TestDatabase>> TestDatabase::Create() {
  Factory& factory = Factory::Get();
  absl::StatusOr<std::string> name = factory.Take();
  if (!name.ok()) return name.status();
  std::string url = WithDatabase(factory.base_url(), *name);
  return std::unique_ptr<TestDatabase>(new TestDatabase(*name, url));
}

TestDatabase::TestDatabase(std::string name, std::string url)
    : name_(std::move(name)), url_(std::move(url)) {}

TestDatabase::~TestDatabase() { Factory::Get().Release(name_); }

absl::Status TestDatabase::Execute(const std::string& sql) {
  try {
    pqxx::connection conn(WithTimeout(url_));
    pqxx::work txn(conn);
    txn.exec(sql);
    txn.commit();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("test database: ", e.what()));
  }
}

absl::StatusOr<std::string> TestDatabase::QueryValue(const std::string& sql) {
  try {
    pqxx::connection conn(WithTimeout(url_));
    pqxx::work txn(conn);
    pqxx::result rows = txn.exec(sql);
    txn.commit();
    if (rows.empty() || rows[0][0].is_null()) return std::string();
    return rows[0][0].as<std::string>();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("test database: ", e.what()));
  }
}

}  // namespace saga::store::pg
