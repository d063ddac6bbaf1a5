#include "tests/support/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace saga::testing {
namespace {

// Binds `fd` to 127.0.0.1 port 0; returns the port the kernel chose, or 0.
int BindLoopback(int fd) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return 0;
  }
  return ntohs(addr.sin_port);
}

}  // namespace

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  const int port = BindLoopback(fd);
  close(fd);
  return port;
}

ListeningLoopbackSocket::ListeningLoopbackSocket() : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
  if (fd_ < 0) return;
  const int port = BindLoopback(fd_);
  if (port != 0 && listen(fd_, 1) == 0) port_ = port;
}

ListeningLoopbackSocket::~ListeningLoopbackSocket() {
  if (fd_ >= 0) close(fd_);
}

}  // namespace saga::testing
