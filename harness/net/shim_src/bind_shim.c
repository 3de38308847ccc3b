/*
 * LD_PRELOAD shim for harness workers: pins wildcard bind() calls to one address.
 *
 * TensorFlow's gRPC server always binds "[::]:PORT" (or 0.0.0.0:PORT), so a
 * worker is reachable from every host that can route to this machine. With
 * HARNESS_BIND_ADDR=<IPv4> set, a bind() to the IPv4 wildcard is rewritten to
 * that address and a bind() to the IPv6 wildcard to its v4-mapped form
 * (::ffff:a.b.c.d), which a dual-stack socket accepts. Other binds are left
 * alone. Unset or unparsable HARNESS_BIND_ADDR makes every wildcard bind fail
 * with EACCES: the shim never silently lets a wildcard through.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static int target_v4(struct in_addr *out) {
  const char *want = getenv("HARNESS_BIND_ADDR");
  return want != NULL && inet_pton(AF_INET, want, out) == 1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static bind_fn real_bind = NULL;
  if (real_bind == NULL) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");

  struct in_addr target;
  if (addr != NULL && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    struct sockaddr_in in4;
    memcpy(&in4, addr, sizeof in4);
    if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
      if (!target_v4(&target)) { errno = EACCES; return -1; }
      in4.sin_addr = target;
      return real_bind(fd, (const struct sockaddr *)&in4, sizeof in4);
    }
  } else if (addr != NULL && addr->sa_family == AF_INET6 &&
             len >= sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 in6;
    memcpy(&in6, addr, sizeof in6);
    if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
      if (!target_v4(&target)) { errno = EACCES; return -1; }
      memset(&in6.sin6_addr, 0, sizeof in6.sin6_addr);
      in6.sin6_addr.s6_addr[10] = 0xff;
      in6.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&in6.sin6_addr.s6_addr[12], &target, 4);
      return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
    }
  }
  return real_bind(fd, addr, len);
}
