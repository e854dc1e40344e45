/*
 * fuzz_command.c - libFuzzer harness for qb_command_parse (bridge/command.c).
 *
 * The policy has everything switched on, a key included. Each input is parsed
 * twice, with the key and without it: mutations almost never keep a valid
 * signature, and without the second pass the argument checks would go
 * unexercised. The
 * clock is fixed at the corpus's time so seeds get past the age check. Every
 * result is also turned into a rejection result, which must always succeed
 * (it is what the bridge publishes for a bad command).
 *
 * Build (not wired into CMake):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ibridge \
 *     tests/fuzz/fuzz_command.c bridge/command.c -ljansson -lcrypto -o fuzz_command
 *   ./fuzz_command tests/fuzz/corpus/command
 */
#include "command.h"
#include "error.h"

#include <stdint.h>
#include <stdlib.h>

#define KEY "0123456789abcdef-test-key"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One parse; every rejection must be reportable as a result. */
static void parse_one(const uint8_t *data, size_t size, const struct qb_command_policy *policy)
{
    struct qb_command_error err;
    struct qb_command *cmd = NULL;
    json_t *result;
    int rc;

    rc = qb_command_parse((const char *)data, size, policy, INT64_C(1763780400), &cmd, &err);
    if (rc == QB_ENOMEM)
        return;
    if (rc != QB_OK && rc != QB_EINVAL)
        abort();
    if (rc == QB_EINVAL) {
        if (!(result = qb_command_result_rejected(cmd, &err)))
            abort();
        json_decref(result);
    }
    qb_command_free(cmd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct qb_command_policy keyed = {
        .enabled = true,
        .allow_mask = (1u << QB_CMD__COUNT) - 1,
        .max_size = 1ULL << 40,
        .max_growth = 1ULL << 30,
        .max_age_ms = 300000,
        .max_skew_ms = 60000,
        .max_message_bytes = 65536,
        .hmac_key = (const unsigned char *)KEY,
        .hmac_key_len = sizeof(KEY) - 1,
    };
    struct qb_command_policy unkeyed = keyed;

    unkeyed.hmac_key = NULL;
    unkeyed.hmac_key_len = 0;
    parse_one(data, size, &keyed);
    parse_one(data, size, &unkeyed);
    return 0;
}
