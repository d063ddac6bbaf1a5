// Crash points for fault tests: `SAGA_CRASHPOINT=<name>[:<n>]` makes the process kill itself
// with SIGKILL the n-th time (default: first) it passes the named point, so that tests hit the
// worst instants on purpose. Compiled in only when SAGA_CRASHPOINTS is defined (CMake option
// SAGA_CRASHPOINTS, on by default; release images turn it off). Thread-safe.
//
// Points: "after_answer_before_commit" (a participant answered; its outcome is not recorded),
//         "after_commit_before_call"   (an attempt is recorded; the call is not sent),
//         "before_commit"              (a decision is made; nothing of it is recorded).
#pragma once

namespace saga::common {

#ifdef SAGA_CRASHPOINTS
void CrashPoint(const char* name);
#else
inline void CrashPoint(const char*) {}
#endif

}  // namespace saga::common
