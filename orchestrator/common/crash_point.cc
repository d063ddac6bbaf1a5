#include "orchestrator/common/crash_point.h"

#ifdef SAGA_CRASHPOINTS
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace saga::common {
namespace {

struct Armed {
  std::string name;
  long hit = 1;
  std::atomic<long> seen{0};
};

Armed* Load() {
  const char* env = std::getenv("SAGA_CRASHPOINT");
  if (env == nullptr || *env == '\0') return nullptr;
  auto* armed = new Armed();
  std::string spec(env);
  const auto colon = spec.find(':');
  armed->name = spec.substr(0, colon);
  if (colon != std::string::npos) armed->hit = std::max(1L, std::atol(spec.c_str() + colon + 1));
  return armed;
}

}  // namespace

void CrashPoint(const char* name) {
  static Armed* armed = Load();
  if (armed == nullptr || armed->name != name) return;
  if (armed->seen.fetch_add(1) + 1 == armed->hit) {
    static const char kMsg[] = "sagad: crash point reached, killing myself\n";
    (void)!write(2, kMsg, sizeof(kMsg) - 1);
    kill(getpid(), SIGKILL);
  }
}

}  // namespace saga::common
#endif
