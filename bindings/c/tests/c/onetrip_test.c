/*
 * The C ABI from C, against a real `onetrip serve` (bindings/c/tests/c_program.rs
 * starts it, creates the keys and passes them in the environment). Built with
 * gcc -Wall -Wextra -Werror -std=c11 and run under valgrind: every handle made
 * here is freed, so any definite or indirect leak is the library's.
 *
 * Environment: ONETRIP_URL, ONETRIP_PORT, ONETRIP_PIN, ONETRIP_API_KEY (audience
 * db, scope db:read), ONETRIP_REVOKED_KEY, ONETRIP_STEPUP_KEY (console second
 * factor), ONETRIP_SERVER_LOG (where the console codes appear),
 * ONETRIP_AUDIENCE_KEY (`onetrip audience-key db`), ONETRIP_OTHER_AUDIENCE_KEY
 * (`onetrip audience-key reports`).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "onetrip.h"

static int failures = 0;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, " (last error: %s)\n", onetrip_last_error());        \
      failures++;                                                          \
    }                                                                      \
  } while (0)

#define EXPECT(call, want)                                                 \
  do {                                                                     \
    onetrip_status got_ = (call);                                          \
    CHECK(got_ == (want), "%s returned %d, want %d", #call, (int)got_,     \
          (int)(want));                                                    \
  } while (0)

static const char *env(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || *v == '\0') {
    fprintf(stderr, "missing environment variable %s\n", name);
    exit(2);
  }
  return v;
}

/* A fingerprint that is well-formed but not the server's. */
static const char *OTHER_PIN = "SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY";
static const char BODY[] = "select 1";

static onetrip_client *new_client(const char *key) {
  onetrip_client *c = NULL;
  EXPECT(onetrip_client_new(env("ONETRIP_URL"), key, env("ONETRIP_PIN"), "db",
                            "db:read", NULL, &c),
         ONETRIP_STATUS_OK);
  return c;
}

static void test_version_and_arguments(void) {
  CHECK(strlen(onetrip_version()) > 0, "empty version");
  onetrip_client *c = NULL;
  EXPECT(onetrip_client_new(NULL, "k", "p", NULL, NULL, NULL, &c),
         ONETRIP_STATUS_NULL_POINTER);
  CHECK(strstr(onetrip_last_error(), "server_url") != NULL, "message names the argument");
  CHECK(c == NULL, "no handle on failure");
  EXPECT(onetrip_client_new(env("ONETRIP_URL"), env("ONETRIP_API_KEY"),
                            "not-a-fingerprint", NULL, NULL, NULL, &c),
         ONETRIP_STATUS_INVALID_ARGUMENT);
  EXPECT(onetrip_client_new(env("ONETRIP_URL"), "otk_garbage", env("ONETRIP_PIN"),
                            NULL, NULL, NULL, &c),
         ONETRIP_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(onetrip_last_error(), "otk_garbage") == NULL, "the key is never echoed");
  EXPECT(onetrip_client_new(env("ONETRIP_URL"), env("ONETRIP_API_KEY"),
                            env("ONETRIP_PIN"), NULL, NULL, NULL, NULL),
         ONETRIP_STATUS_NULL_POINTER);
  EXPECT(onetrip_client_token(NULL, NULL, 0, NULL), ONETRIP_STATUS_NULL_POINTER);
  EXPECT(onetrip_client_invalidate(NULL), ONETRIP_STATUS_NULL_POINTER);
  uint8_t op[ONETRIP_OPERATION_LEN];
  EXPECT(onetrip_last_operation(op, sizeof op), ONETRIP_STATUS_INVALID_ARGUMENT);
  onetrip_client_free(NULL);
  onetrip_verifier_free(NULL);
  onetrip_handshake_free(NULL);
}

static void test_token_and_verifier(onetrip_client *c, onetrip_verifier *v) {
  size_t len = 0;
  EXPECT(onetrip_client_token(c, NULL, 0, &len), ONETRIP_STATUS_BUFFER_TOO_SMALL);
  CHECK(len == ONETRIP_AUTHORIZATION_LEN, "size query gave %zu", len);
  char small[16];
  len = 0;
  EXPECT(onetrip_client_token(c, small, sizeof small, &len), ONETRIP_STATUS_BUFFER_TOO_SMALL);
  CHECK(len == ONETRIP_AUTHORIZATION_LEN, "too small gave %zu", len);
  char auth[ONETRIP_AUTHORIZATION_LEN + 1];
  EXPECT(onetrip_client_token(c, auth, sizeof auth, &len), ONETRIP_STATUS_OK);
  CHECK(len == strlen(auth) && strncmp(auth, "Onetrip ", 8) == 0, "authorization %.12s…", auth);
  CHECK(strcmp(onetrip_last_error(), "") == 0, "success clears the message");

  onetrip_claims claims;
  memset(&claims, 0, sizeof claims);
  EXPECT(onetrip_verifier_verify_token(v, auth, &claims), ONETRIP_STATUS_OK);
  CHECK(strcmp(claims.audience, "db") == 0, "audience %s", claims.audience);
  CHECK(strcmp(claims.scopes, "db:read") == 0, "scopes %s", claims.scopes);
  CHECK(strlen(claims.api_key_id) == 32 && !claims.second_factor, "key id %s", claims.api_key_id);
  CHECK(claims.expires_at > (uint64_t)time(NULL), "expires %llu", (unsigned long long)claims.expires_at);
  EXPECT(onetrip_verifier_verify_token(v, auth + 8, NULL), ONETRIP_STATUS_OK);
  auth[40] = auth[40] == 'A' ? 'B' : 'A';
  EXPECT(onetrip_verifier_verify_token(v, auth, NULL), ONETRIP_STATUS_TOKEN_INVALID);
  EXPECT(onetrip_verifier_verify_token(v, "Onetrip short", NULL), ONETRIP_STATUS_TOKEN_INVALID);
  EXPECT(onetrip_verifier_verify_token(v, NULL, NULL), ONETRIP_STATUS_NULL_POINTER);
  explicit_bzero(auth, sizeof auth);
}

static void test_sign_request(onetrip_client *c, onetrip_verifier *v) {
  char auth[ONETRIP_AUTHORIZATION_LEN + 1], pop[ONETRIP_POP_LEN + 1];
  EXPECT(onetrip_client_sign_request(c, "POST", "/query", (const uint8_t *)BODY,
                                     strlen(BODY), auth, sizeof auth, pop, sizeof pop),
         ONETRIP_STATUS_OK);
  CHECK(strlen(pop) == ONETRIP_POP_LEN, "pop length %zu", strlen(pop));
  onetrip_claims claims;
  uint8_t replay[ONETRIP_REPLAY_ID_LEN] = {0}, zero[ONETRIP_REPLAY_ID_LEN] = {0};
  EXPECT(onetrip_verifier_verify_request(v, auth, pop, "POST", "/query", (const uint8_t *)BODY,
                                         strlen(BODY), 0, &claims, replay),
         ONETRIP_STATUS_OK);
  CHECK(memcmp(replay, zero, sizeof replay) != 0, "replay id filled");
  CHECK(strcmp(claims.audience, "db") == 0, "audience %s", claims.audience);
  EXPECT(onetrip_verifier_verify_request(v, auth, pop, "POST", "/other", (const uint8_t *)BODY,
                                         strlen(BODY), 0, NULL, NULL),
         ONETRIP_STATUS_POP_INVALID);
  EXPECT(onetrip_verifier_verify_request(v, auth, pop, "POST", "/query", (const uint8_t *)"select 2",
                                         8, 0, NULL, NULL),
         ONETRIP_STATUS_POP_INVALID);
  EXPECT(onetrip_client_sign_request(c, NULL, "/query", NULL, 0, auth, sizeof auth, pop, sizeof pop),
         ONETRIP_STATUS_NULL_POINTER);
  EXPECT(onetrip_client_sign_request(c, "GET", "/", NULL, 1, auth, sizeof auth, pop, sizeof pop),
         ONETRIP_STATUS_NULL_POINTER);
  EXPECT(onetrip_client_sign_request(c, "GET", "/", NULL, 0, auth, sizeof auth, pop, 10),
         ONETRIP_STATUS_BUFFER_TOO_SMALL);
  CHECK(strstr(onetrip_last_error(), "72") != NULL, "message gives the size: %s", onetrip_last_error());
  explicit_bzero(auth, sizeof auth);
}

static void test_refusals(void) {
  char auth[ONETRIP_AUTHORIZATION_LEN + 1];
  onetrip_client *revoked = new_client(env("ONETRIP_REVOKED_KEY"));
  EXPECT(onetrip_client_token(revoked, auth, sizeof auth, NULL), ONETRIP_STATUS_AUTH_FAILED);
  CHECK(strstr(onetrip_last_error(), "authentication failed") != NULL, "message: %s", onetrip_last_error());
  CHECK(strstr(onetrip_last_error(), env("ONETRIP_REVOKED_KEY")) == NULL, "the key is never echoed");
  onetrip_client_free(revoked);

  onetrip_client *impostor = NULL;
  EXPECT(onetrip_client_new(env("ONETRIP_URL"), env("ONETRIP_API_KEY"), OTHER_PIN, "db", NULL,
                            NULL, &impostor),
         ONETRIP_STATUS_OK);
  EXPECT(onetrip_client_token(impostor, auth, sizeof auth, NULL), ONETRIP_STATUS_SERVER_IDENTITY_CHANGED);
  CHECK(strstr(onetrip_last_error(), env("ONETRIP_PIN")) != NULL, "names the real identity");
  onetrip_client_free(impostor);

  onetrip_client *nowhere = NULL;
  EXPECT(onetrip_client_new("http://127.0.0.1:1", env("ONETRIP_API_KEY"), env("ONETRIP_PIN"), "db",
                            NULL, NULL, &nowhere),
         ONETRIP_STATUS_OK);
  EXPECT(onetrip_client_token(nowhere, auth, sizeof auth, NULL), ONETRIP_STATUS_UNAVAILABLE);
  onetrip_client_free(nowhere);

  onetrip_client *denied = NULL;
  EXPECT(onetrip_client_new(env("ONETRIP_URL"), env("ONETRIP_API_KEY"), env("ONETRIP_PIN"), "db",
                            "db:write", NULL, &denied),
         ONETRIP_STATUS_OK);
  EXPECT(onetrip_client_token(denied, auth, sizeof auth, NULL), ONETRIP_STATUS_SCOPE_DENIED);
  onetrip_client_free(denied);
}

static void test_login(onetrip_client *c, onetrip_verifier *v) {
  size_t len = 0;
  EXPECT(onetrip_client_login_credential(c, "app", "orders", NULL, 0, &len), ONETRIP_STATUS_BUFFER_TOO_SMALL);
  CHECK(len == ONETRIP_LOGIN_CREDENTIAL_LEN, "size query gave %zu", len);
  char cred[ONETRIP_LOGIN_CREDENTIAL_LEN + 1], other[ONETRIP_LOGIN_CREDENTIAL_LEN + 1];
  EXPECT(onetrip_client_login_credential(c, "app", "orders", cred, sizeof cred, &len), ONETRIP_STATUS_OK);
  CHECK(len == strlen(cred) && strncmp(cred, "otl1.", 5) == 0, "credential %.8s…", cred);
  onetrip_login login;
  memset(&login, 0, sizeof login);
  EXPECT(onetrip_verifier_verify_login(v, cred, "app", "orders", &login), ONETRIP_STATUS_OK);
  CHECK(strcmp(login.claims.audience, "db") == 0, "audience %s", login.claims.audience);
  CHECK(login.not_after > (uint64_t)time(NULL), "not_after %llu", (unsigned long long)login.not_after);
  /* Bound to user, database and audience; altered ones are refused. */
  EXPECT(onetrip_verifier_verify_login(v, cred, "admin", "orders", NULL), ONETRIP_STATUS_LOGIN_INVALID);
  EXPECT(onetrip_verifier_verify_login(v, cred, "app", "billing", NULL), ONETRIP_STATUS_LOGIN_INVALID);
  EXPECT(onetrip_verifier_verify_login(v, cred, "app", NULL, NULL), ONETRIP_STATUS_LOGIN_INVALID);
  memcpy(other, cred, sizeof cred);
  other[ONETRIP_LOGIN_CREDENTIAL_LEN - 10] = other[ONETRIP_LOGIN_CREDENTIAL_LEN - 10] == 'A' ? 'B' : 'A';
  EXPECT(onetrip_verifier_verify_login(v, other, "app", "orders", NULL), ONETRIP_STATUS_LOGIN_INVALID);
  EXPECT(onetrip_verifier_verify_login(v, "password", "app", "orders", NULL), ONETRIP_STATUS_LOGIN_INVALID);
  EXPECT(onetrip_verifier_verify_login(v, NULL, "app", "orders", NULL), ONETRIP_STATUS_NULL_POINTER);
  onetrip_verifier *elsewhere = NULL;
  EXPECT(onetrip_verifier_new(env("ONETRIP_OTHER_AUDIENCE_KEY"), "reports", &elsewhere), ONETRIP_STATUS_OK);
  onetrip_status got = onetrip_verifier_verify_login(elsewhere, cred, "app", "orders", NULL);
  CHECK(got == ONETRIP_STATUS_LOGIN_INVALID || got == ONETRIP_STATUS_TOKEN_INVALID,
        "another audience's database accepted it (%d)", (int)got);
  onetrip_verifier_free(elsewhere);
  /* Each credential has its own replay id; without a database name it binds none. */
  onetrip_login second;
  EXPECT(onetrip_client_login_credential(c, "app", NULL, other, sizeof other, NULL), ONETRIP_STATUS_OK);
  EXPECT(onetrip_verifier_verify_login(v, other, "app", NULL, &second), ONETRIP_STATUS_OK);
  CHECK(memcmp(second.replay_id, login.replay_id, ONETRIP_REPLAY_ID_LEN) != 0, "replay ids differ");
  EXPECT(onetrip_verifier_verify_login(v, other, "app", "orders", NULL), ONETRIP_STATUS_LOGIN_INVALID);
  explicit_bzero(cred, sizeof cred);
  explicit_bzero(other, sizeof other);
}

/* The console channel's code for `operation`, from the server's log. */
static int console_code(const uint8_t operation[ONETRIP_OPERATION_LEN], char *code, size_t cap) {
  char marker[64] = "(operation ";
  for (size_t i = 0; i < ONETRIP_OPERATION_LEN; i++)
    snprintf(marker + 11 + 2 * i, 3, "%02x", operation[i]);
  strcat(marker, "): ");
  for (int tries = 0; tries < 250; tries++) {
    FILE *f = fopen(env("ONETRIP_SERVER_LOG"), "r");
    char line[1024];
    int found = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
      char *at = strstr(line, marker);
      if (at != NULL && strchr(line, '\n') != NULL) {
        snprintf(code, cap, "%s", at + strlen(marker));
        code[strcspn(code, "\r\n")] = '\0';
        found = 1;
      }
    }
    if (f != NULL) fclose(f);
    if (found) return 0;
    usleep(20000);
  }
  return -1;
}

static void test_step_up(onetrip_verifier *v) {
  onetrip_client *c = new_client(env("ONETRIP_STEPUP_KEY"));
  char auth[ONETRIP_AUTHORIZATION_LEN + 1];
  EXPECT(onetrip_client_token(c, auth, sizeof auth, NULL), ONETRIP_STATUS_SECOND_FACTOR_REQUIRED);
  CHECK(strstr(onetrip_last_error(), "console") != NULL, "message names the channel: %s", onetrip_last_error());
  uint8_t op[ONETRIP_OPERATION_LEN];
  EXPECT(onetrip_last_operation(op, sizeof op), ONETRIP_STATUS_OK);
  char code[32] = "";
  CHECK(console_code(op, code, sizeof code) == 0, "no console code in the server log");
  char wrong[32];
  snprintf(wrong, sizeof wrong, "%s", code);
  size_t n = strlen(wrong);
  if (n > 0) wrong[n - 1] = wrong[n - 1] == '0' ? '1' : '0';
  EXPECT(onetrip_client_token_with_code(c, op, sizeof op, wrong, auth, sizeof auth, NULL),
         ONETRIP_STATUS_SECOND_FACTOR_FAILED);
  EXPECT(onetrip_client_token_with_code(c, op, 3, code, auth, sizeof auth, NULL),
         ONETRIP_STATUS_INVALID_ARGUMENT);
  EXPECT(onetrip_client_token_with_code(c, op, sizeof op, code, auth, sizeof auth, NULL), ONETRIP_STATUS_OK);
  onetrip_claims claims;
  EXPECT(onetrip_verifier_verify_token(v, auth, &claims), ONETRIP_STATUS_OK);
  CHECK(claims.second_factor, "the token carries the second-factor flag");
  /* The step-up token is cached: the next token call returns it without a code. */
  char again[ONETRIP_AUTHORIZATION_LEN + 1];
  EXPECT(onetrip_client_token(c, again, sizeof again, NULL), ONETRIP_STATUS_OK);
  CHECK(strcmp(auth, again) == 0, "cached step-up token");
  explicit_bzero(auth, sizeof auth);
  explicit_bzero(again, sizeof again);
  explicit_bzero(code, sizeof code);
  onetrip_client_free(c);
}

/* Several threads share one client: one handshake, every signature verifies. */
struct worker {
  onetrip_client *client;
  onetrip_verifier *verifier;
  int failures;
  char first[ONETRIP_AUTHORIZATION_LEN + 1];
};

static void *work(void *arg) {
  struct worker *w = arg;
  for (int i = 0; i < 10; i++) {
    char auth[ONETRIP_AUTHORIZATION_LEN + 1], pop[ONETRIP_POP_LEN + 1];
    if (onetrip_client_token(w->client, auth, sizeof auth, NULL) != ONETRIP_STATUS_OK) w->failures++;
    if (i == 0) memcpy(w->first, auth, sizeof auth);
    if (onetrip_client_sign_request(w->client, "GET", "/rows", NULL, 0, auth, sizeof auth, pop,
                                    sizeof pop) != ONETRIP_STATUS_OK ||
        onetrip_verifier_verify_request(w->verifier, auth, pop, "GET", "/rows", NULL, 0, 0, NULL,
                                        NULL) != ONETRIP_STATUS_OK)
      w->failures++;
  }
  return NULL;
}

static void test_threads(onetrip_verifier *v) {
  onetrip_client *c = new_client(env("ONETRIP_API_KEY"));
  enum { THREADS = 6 };
  pthread_t threads[THREADS];
  struct worker workers[THREADS];
  for (int i = 0; i < THREADS; i++) {
    workers[i] = (struct worker){.client = c, .verifier = v, .failures = 0};
    CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0, "pthread_create");
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(threads[i], NULL);
    CHECK(workers[i].failures == 0, "thread %d had %d failures", i, workers[i].failures);
    CHECK(strcmp(workers[i].first, workers[0].first) == 0, "threads share one token");
  }
  onetrip_client_free(c);
}

/* One HTTP/1.1 exchange with the server; returns the body length or -1. */
static long http(const char *method, const char *path, const uint8_t *body, size_t body_len,
                 uint8_t *out, size_t cap, int *status) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(env("ONETRIP_PORT")))};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char head[256];
  int n = snprintf(head, sizeof head,
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                   "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n",
                   method, path, body_len);
  if (write(fd, head, (size_t)n) != n || (body_len > 0 && write(fd, body, body_len) != (ssize_t)body_len)) {
    close(fd);
    return -1;
  }
  static uint8_t raw[16384];
  size_t got = 0;
  ssize_t r;
  while (got < sizeof raw && (r = read(fd, raw + got, sizeof raw - got)) > 0) got += (size_t)r;
  close(fd);
  uint8_t *end = memmem(raw, got, "\r\n\r\n", 4);
  if (end == NULL || sscanf((const char *)raw, "HTTP/1.1 %d", status) != 1) return -1;
  size_t start = (size_t)(end + 4 - raw), len = got - start;
  if (len > cap) return -1;
  memcpy(out, raw + start, len);
  return (long)len;
}

static void test_sans_io(onetrip_verifier *v) {
  onetrip_handshake *h = NULL;
  EXPECT(onetrip_handshake_new(env("ONETRIP_API_KEY"), env("ONETRIP_PIN"), "db", "db:read", &h),
         ONETRIP_STATUS_OK);
  uint8_t request[ONETRIP_REQUEST_LEN], response[4096], document[8192];
  EXPECT(onetrip_handshake_begin(h, NULL, 0, NULL, request, sizeof request), ONETRIP_STATUS_DOCUMENT_REQUIRED);
  EXPECT(onetrip_handshake_complete(h, response, ONETRIP_RESPONSE_LEN), ONETRIP_STATUS_INVALID_ARGUMENT);
  int status = 0;
  long doc_len = http("GET", "/v1/server-key", NULL, 0, document, sizeof document, &status);
  CHECK(doc_len > 0 && status == 200, "GET /v1/server-key: %ld, HTTP %d", doc_len, status);

  onetrip_handshake *impostor = NULL;
  EXPECT(onetrip_handshake_new(env("ONETRIP_API_KEY"), OTHER_PIN, "db", NULL, &impostor), ONETRIP_STATUS_OK);
  EXPECT(onetrip_handshake_accept_document(impostor, document, (size_t)doc_len),
         ONETRIP_STATUS_SERVER_IDENTITY_CHANGED);
  onetrip_handshake_free(impostor);
  uint8_t bad[64] = {0};
  EXPECT(onetrip_handshake_accept_document(h, bad, sizeof bad), ONETRIP_STATUS_PROTOCOL);

  EXPECT(onetrip_handshake_accept_document(h, document, (size_t)doc_len), ONETRIP_STATUS_OK);
  EXPECT(onetrip_handshake_begin(h, NULL, 0, NULL, request, 100), ONETRIP_STATUS_BUFFER_TOO_SMALL);
  EXPECT(onetrip_handshake_begin(h, NULL, 0, NULL, request, sizeof request), ONETRIP_STATUS_OK);
  long resp_len = http("POST", "/v1/auth", request, sizeof request, response, sizeof response, &status);
  CHECK(resp_len == ONETRIP_RESPONSE_LEN && status == 200, "POST /v1/auth: %ld bytes, HTTP %d", resp_len, status);
  EXPECT(onetrip_handshake_complete(h, response, (size_t)resp_len), ONETRIP_STATUS_OK);
  /* The same response again: its request is spent. */
  EXPECT(onetrip_handshake_complete(h, response, (size_t)resp_len), ONETRIP_STATUS_INVALID_ARGUMENT);

  char auth[ONETRIP_AUTHORIZATION_LEN + 1], pop[ONETRIP_POP_LEN + 1];
  EXPECT(onetrip_handshake_token(h, auth, sizeof auth, NULL), ONETRIP_STATUS_OK);
  onetrip_claims claims;
  EXPECT(onetrip_verifier_verify_token(v, auth, &claims), ONETRIP_STATUS_OK);
  CHECK(strcmp(claims.scopes, "db:read") == 0, "scopes %s", claims.scopes);
  EXPECT(onetrip_handshake_sign_request(h, "CONNECT", "orders", (const uint8_t *)BODY, strlen(BODY), auth,
                                        sizeof auth, pop, sizeof pop),
         ONETRIP_STATUS_OK);
  EXPECT(onetrip_verifier_verify_request(v, auth, pop, "CONNECT", "orders", (const uint8_t *)BODY, strlen(BODY),
                                         0, NULL, NULL),
         ONETRIP_STATUS_OK);
  /* A response altered in transit is refused. */
  EXPECT(onetrip_handshake_begin(h, NULL, 0, NULL, request, sizeof request), ONETRIP_STATUS_OK);
  resp_len = http("POST", "/v1/auth", request, sizeof request, response, sizeof response, &status);
  response[200] ^= 1;
  EXPECT(onetrip_handshake_complete(h, response, (size_t)resp_len), ONETRIP_STATUS_PROTOCOL);
  explicit_bzero(auth, sizeof auth);
  onetrip_handshake_free(h);
}

int main(void) {
  test_version_and_arguments();
  onetrip_verifier *v = NULL;
  EXPECT(onetrip_verifier_new("0102:zz", "db", &v), ONETRIP_STATUS_INVALID_ARGUMENT);
  EXPECT(onetrip_verifier_new(env("ONETRIP_AUDIENCE_KEY"), "db", &v), ONETRIP_STATUS_OK);
  onetrip_client *c = new_client(env("ONETRIP_API_KEY"));
  if (c == NULL || v == NULL) return 1;
  test_token_and_verifier(c, v);
  test_sign_request(c, v);
  test_login(c, v);
  test_refusals();
  test_step_up(v);
  test_threads(v);
  test_sans_io(v);
  onetrip_client_free(c);
  onetrip_verifier_free(v);
  if (failures > 0) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("onetrip C ABI: all checks passed\n");
  return 0;
}
