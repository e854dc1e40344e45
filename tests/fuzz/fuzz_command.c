/*
 * fuzz_command.c - libFuzzer harness for qb_command_parse (bridge/command.c).
 *
 * The policy has everything switched on, a key included. Each input is parsed
 * three times:
 *   1. with the key: the signature check as a hostile sender meets it;
 *   2. without it: mutations almost never keep a valid signature, and without
 *      this pass the argument checks would go unexercised;
 *   3. re-signed: when the input is a JSON object, the harness signs it with
 *      qb_command_sign (as an orchestrator would), serialises it and parses it
 *      with the key. Whatever else is wrong with it, it must never be rejected
 *      as "unauthenticated": sign -> serialise -> parse -> verify has to agree
 *      for every object, or honest senders get refused.
 * The clock is fixed at the corpus's time so seeds get past the age check.
 * Every rejection is also turned into a rejection result, which must always
 * succeed and serialise (it is what the bridge publishes for a bad command).
 *
 * Built by tests/fuzz/CMakeLists.txt (cmake -DQB_FUZZ=ON, clang); run by
 * tests/fuzz/run-fuzzers.sh on a copy of tests/fuzz/corpus/command/.
 */
#include "command.h"
#include "error.h"
#include "log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KEY "0123456789abcdef-test-key"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct qb_command_policy fz_keyed = {
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

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Rejections are logged at warning level; thousands a second are just slow. */
    qb_log_set_level(QB_LOG_ERROR);
    return 0;
}

/*
 * One parse; every rejection must be reportable as a result. Returns the
 * rejection class (static string), NULL when accepted or out of memory.
 */
static const char *fz_parse(const char *buf, size_t size, const struct qb_command_policy *policy)
{
    struct qb_command_error err;
    struct qb_command *cmd = NULL;
    json_t *result;
    char *text;
    int rc;

    memset(&err, 0, sizeof(err));
    rc = qb_command_parse(buf, size, policy, INT64_C(1763780400), &cmd, &err);
    if (rc == QB_ENOMEM)
        return NULL;
    if (rc != QB_OK && rc != QB_EINVAL)
        abort();
    if (cmd == NULL)
        abort();
    if (rc == QB_OK) {
        /* An accepted command names a known command and the VM it is for. */
        if (!cmd->name_known || qb_cmd_name_str(cmd->name) == NULL || cmd->subject == NULL)
            abort();
        qb_command_free(cmd);
        return NULL;
    }
    if (err.cls == NULL || memchr(err.message, '\0', sizeof(err.message)) == NULL)
        abort();
    if (!(result = qb_command_result_rejected(cmd, &err)))
        abort();
    if (!(text = json_dumps(result, JSON_COMPACT)))
        abort();
    free(text);
    json_decref(result);
    qb_command_free(cmd);
    return err.cls;
}

/*
 * Pass 3: sign the object as a sender would (naming a bridge, as a signed
 * command must: the topic that chose the bridge is not signed), then the
 * bridge must agree with the signature.
 */
static void fz_resign(const uint8_t *data, size_t size)
{
    char hex[65];
    char *text;
    json_t *obj = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    const char *cls;

    if (obj == NULL)
        return;
    if (json_is_object(obj) && !json_object_get(obj, "bridge"))
        json_object_set_new(obj, "bridge", json_string("fuzz-bridge"));
    if (json_is_object(obj) &&
        qb_command_sign(obj, fz_keyed.hmac_key, fz_keyed.hmac_key_len, hex, sizeof(hex)) == QB_OK &&
        json_object_set_new(obj, "signature", json_string(hex)) == 0 &&
        (text = json_dumps(obj, JSON_COMPACT))) {
        cls = fz_parse(text, strlen(text), &fz_keyed);
        if (cls != NULL && strcmp(cls, QB_CMD_ERR_UNAUTHENTICATED) == 0)
            abort();
        free(text);
    }
    json_decref(obj);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qb_command_policy unkeyed = fz_keyed;

    unkeyed.hmac_key = NULL;
    unkeyed.hmac_key_len = 0;
    fz_parse((const char *)data, size, &fz_keyed);
    fz_parse((const char *)data, size, &unkeyed);
    fz_resign(data, size);
    return 0;
}
