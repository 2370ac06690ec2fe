#define _DEFAULT_SOURCE
#include <stdio.h>
#include <string.h>
#include "onetrip.h"

int main(void) {
  onetrip_client *c;  /* one per process: thread-safe, caches the token */
  char password[ONETRIP_LOGIN_CREDENTIAL_LEN + 1];
  if (onetrip_client_new("http://127.0.0.1:7420", "otk_…", "SHA256:…", "db", NULL, NULL, &c) ||
      onetrip_client_login_credential(c, "app", "orders", password, sizeof password, NULL))
    return fprintf(stderr, "onetrip: %s\n", onetrip_last_error()), 1;
  /* PQconnectdb("user=app dbname=orders password=…") with this password */
  explicit_bzero(password, sizeof password);
  onetrip_client_free(c);
}
