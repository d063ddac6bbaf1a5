// Loopback ports for tests that start servers and child processes.
#pragma once

namespace saga::testing {

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released), or 0.
int FreeLoopbackPort();

// A socket that listens on a port of 127.0.0.1, for tests of "address already in use".
// Closed by the destructor.
class ListeningLoopbackSocket {
 public:
  ListeningLoopbackSocket();
  ~ListeningLoopbackSocket();
  ListeningLoopbackSocket(const ListeningLoopbackSocket&) = delete;
  ListeningLoopbackSocket& operator=(const ListeningLoopbackSocket&) = delete;

  // 0 if binding or listening failed.
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace saga::testing
