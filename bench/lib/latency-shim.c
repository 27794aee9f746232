/*
 * BENCHMARK AND TEST ONLY: an emulated network HSM. A PKCS#11 module that forwards every call to
 * the REAL module (SoftHSM2) and holds each C_Encrypt and C_Decrypt that produces output for a
 * fixed time, as a network HSM's round trip does: the calling thread sleeps (it does not spin),
 * so a synchronous call blocks Node's event loop for that long and an asynchronous one (pkcs11js
 * *Async) occupies a libuv thread-pool thread for that long, exactly as a real client library's
 * blocking socket read would. Size queries (NULL output buffer) are not held.
 *
 * Being a real .so loaded by hsm.module, it needs no hook in the proxy: the proxy runs unchanged.
 * Configured from the environment, which hsm.moduleEnv sets before the module is loaded:
 *
 *   XKS_SHIM_MODULE      path of the real module (required)
 *   XKS_SHIM_HOLD_US     hold per C_Encrypt/C_Decrypt, in microseconds (default 0)
 *   XKS_SHIM_BARRIER     (tests) hold each call until this many are held at once, or until
 *                        XKS_SHIM_BARRIER_MS (default 10000) has passed: shows how many calls
 *                        can be in the module at the same time, without depending on timing;
 *   XKS_SHIM_BARRIER_ARM_FILE  (tests) ... only while this file exists (so start-up is not held)
 *   XKS_SHIM_STATS_FILE  (tests) after each held call, "held=<n> max=<m>\n" is written there:
 *                        calls held so far and the most held at the same time
 *
 * Built by bench/lib/latency-shim.ts: cc -shared -fPIC -O2 -o latency-shim.so latency-shim.c -ldl -lpthread
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CK_PTR *
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType(*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType(*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#include "pkcs11.h"

static CK_FUNCTION_LIST real_list_copy;
static CK_FUNCTION_LIST shim_list;
static CK_FUNCTION_LIST_PTR real = NULL;
static long hold_us = 0;
static long barrier = 0;
static long barrier_ms = 10000;
static const char *stats_file = NULL;
static const char *arm_file = NULL;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long held_now = 0, held_max = 0, held_total = 0;

static void write_stats(void) {
  char line[64];
  int n;
  int fd;
  if (!stats_file) return;
  pthread_mutex_lock(&mu);
  n = snprintf(line, sizeof line, "held=%ld max=%ld\n", held_total, held_max);
  fd = open(stats_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd >= 0) {
    if (write(fd, line, (size_t)n) < 0) { /* stats are best effort */ }
    close(fd);
  }
  pthread_mutex_unlock(&mu);
}

/* Now on `clock`, plus `us` microseconds. */
static void after_us(clockid_t clock, long us, struct timespec *t) {
  clock_gettime(clock, t);
  t->tv_sec += us / 1000000;
  t->tv_nsec += (us % 1000000) * 1000L;
  if (t->tv_nsec >= 1000000000L) {
    t->tv_sec++;
    t->tv_nsec -= 1000000000L;
  }
}

static void sleep_until(const struct timespec *t) {
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR) {
  }
}

/* Holds the calling thread: the fixed round trip, and in barrier mode until enough are held. */
static void hold(void) {
  struct timespec until;
  if (hold_us <= 0 && barrier <= 0 && !stats_file) return;
  pthread_mutex_lock(&mu);
  held_now++;
  held_total++;
  if (held_now > held_max) held_max = held_now;
  pthread_cond_broadcast(&cv);
  if (barrier > 0 && (!arm_file || access(arm_file, F_OK) == 0)) {
    struct timespec deadline;
    after_us(CLOCK_REALTIME, barrier_ms * 1000L, &deadline);
    while (held_max < barrier) {
      if (pthread_cond_timedwait(&cv, &mu, &deadline) == ETIMEDOUT) break;
    }
  }
  pthread_mutex_unlock(&mu);
  if (hold_us > 0) {
    after_us(CLOCK_MONOTONIC, hold_us, &until);
    sleep_until(&until);
  }
  pthread_mutex_lock(&mu);
  held_now--;
  pthread_mutex_unlock(&mu);
  write_stats();
}

static CK_RV shim_C_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  if (out != NULL_PTR) hold();
  return real->C_Encrypt(s, data, len, out, out_len);
}

static CK_RV shim_C_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  if (out != NULL_PTR) hold();
  return real->C_Decrypt(s, data, len, out, out_len);
}

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp);

static CK_RV load_real(void) {
  const char *path;
  const char *v;
  void *lib;
  CK_C_GetFunctionList get;
  CK_FUNCTION_LIST_PTR list = NULL;
  if (real) return CKR_OK;
  path = getenv("XKS_SHIM_MODULE");
  if (!path || !*path) return CKR_GENERAL_ERROR;
  lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return CKR_GENERAL_ERROR;
  get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  if (!get || get(&list) != CKR_OK || !list) return CKR_GENERAL_ERROR;
  if ((v = getenv("XKS_SHIM_HOLD_US"))) hold_us = atol(v);
  if ((v = getenv("XKS_SHIM_BARRIER"))) barrier = atol(v);
  if ((v = getenv("XKS_SHIM_BARRIER_MS"))) barrier_ms = atol(v);
  if ((v = getenv("XKS_SHIM_STATS_FILE")) && *v) stats_file = strdup(v);
  if ((v = getenv("XKS_SHIM_BARRIER_ARM_FILE")) && *v) arm_file = strdup(v);
  real_list_copy = *list;
  real = &real_list_copy;
  shim_list = *list;
  shim_list.C_GetFunctionList = shim_C_GetFunctionList;
  shim_list.C_Encrypt = shim_C_Encrypt;
  shim_list.C_Decrypt = shim_C_Decrypt;
  return CKR_OK;
}

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp) {
  CK_RV rv;
  if (!pp) return CKR_ARGUMENTS_BAD;
  rv = load_real();
  if (rv != CKR_OK) return rv;
  *pp = &shim_list;
  return CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp) { return shim_C_GetFunctionList(pp); }
