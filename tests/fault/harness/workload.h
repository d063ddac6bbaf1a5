// The bank-transfer workload: the five-step saga definition (reserve, debit, credit, fee,
// confirm; each with its compensation) over the bank participant, and seeded saga inputs with
// scripted outcomes. The same seed gives the same sagas, keys, amounts and scripts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace saga::fault {

inline constexpr char kDefinitionName[] = "bank-transfer";
inline constexpr const char* kSteps[] = {"reserve", "debit", "credit", "fee", "confirm"};
inline constexpr int kStepCount = 5;

struct DefinitionOptions {
  std::string name = kDefinitionName;
  std::string target;  // the bank participant, "127.0.0.1:<port>"
  std::string timeout = "1s";
  int max_attempts = 6;
  std::string initial_backoff = "100ms";
  std::string max_backoff = "1s";
  std::string compensation_timeout;  // empty: the same as `timeout`
  int compensation_max_attempts = 10;
};
std::string BankTransferYaml(const DefinitionOptions& options);

struct WorkloadOptions {
  uint64_t seed = 1;
  int sagas = 100;
  std::string key_prefix = "t";
  double fail_share = 0.30;            // business failure at a random step (1..5)
  double comp_transient_share = 0.10;  // fail at step 2..5, compensations fail 1..3 times first
  int accounts = 20;
  int delay_ms = 0;  // per-call delay asked of the participant
  // Share of sagas whose action at a random step is held `hang_ms` at the participant (all its
  // deliveries): the step ends with an unknown outcome and is compensated; the held deliveries
  // then meet the anti-hanging rule.
  double hang_share = 0;
  int hang_ms = 12000;
  // Every saga's first action (reserve) is held this long at the participant, each delivery
  // (keeps one call per saga in flight; the plan is unchanged).
  int hold_first_step_ms = 0;
};

struct SagaSpec {
  std::string key;
  std::string input_json;
  int fail_step = -1;  // index of the scripted business failure, -1 none
  bool comp_transient = false;
  int hang_step = -1;  // index of the held action, -1 none
};
std::vector<SagaSpec> MakeWorkload(const WorkloadOptions& options);

}  // namespace saga::fault
