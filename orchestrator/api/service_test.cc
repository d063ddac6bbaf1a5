#include "orchestrator/api/service.h"

#include <string>

#include "gtest/gtest.h"

namespace saga::api {
namespace {

TEST(StartFailure, UnknownOutcomeWithKeyIsRetryable) {
  const absl::Status s = StartFailure(absl::UnknownError("connection lost during COMMIT"),
                                      /*has_idempotency_key=*/true);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("connection lost during COMMIT"), absl::string_view::npos);
  EXPECT_NE(s.message().find("same idempotency_key"), absl::string_view::npos);
}

TEST(StartFailure, UnknownOutcomeWithoutKeyStaysUnknown) {
  const absl::Status s = StartFailure(absl::UnknownError("outcome unknown"), false);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_NE(s.message().find("cannot be retried safely"), absl::string_view::npos);
}

TEST(StartFailure, OtherCodesPassThrough) {
  for (const absl::Status& in :
       {absl::UnavailableError("database down"), absl::AlreadyExistsError("key used"),
        absl::InternalError("bug")}) {
    EXPECT_EQ(StartFailure(in, true), in);
    EXPECT_EQ(StartFailure(in, false), in);
  }
}

TEST(UnknownOutcome, RetrySafeBecomesUnavailableAndOthersStayUnknown) {
  const absl::Status lost = absl::UnknownError("connection lost during COMMIT");
  const absl::Status safe = UnknownOutcome(lost, "the abort request", true, "ask again");
  EXPECT_EQ(safe.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(safe.message(),
            "the abort request may or may not have been recorded (connection lost during "
            "COMMIT); ask again");
  const absl::Status unsafe = UnknownOutcome(lost, "the retry request", false, "look first");
  EXPECT_EQ(unsafe.code(), absl::StatusCode::kUnknown);
  EXPECT_NE(unsafe.message().find("look first"), absl::string_view::npos);
  EXPECT_TRUE(UnknownOutcome(absl::OkStatus(), "x", true, "y").ok());
  EXPECT_EQ(UnknownOutcome(absl::NotFoundError("no saga"), "x", true, "y"),
            absl::NotFoundError("no saga"));
}

TEST(ValidateSagaId, AcceptsLowercaseUuidOnly) {
  EXPECT_TRUE(ValidateSagaId("0f8fad5b-d9cb-469f-a165-70867728950e").ok());
  EXPECT_EQ(ValidateSagaId("0F8FAD5B-D9CB-469F-A165-70867728950E").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSagaId("0f8fad5bd9cb469fa16570867728950e").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSagaId("").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saga::api
