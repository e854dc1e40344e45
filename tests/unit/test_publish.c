/*
 * test_publish.c - the one publishing door (bridge/publish.c): numbering of a
 * VM's stream, continuing a removed VM's numbering, leftovers of a removed
 * session, the bridge's own numbering for results that belong to no VM, and
 * the messages it hands to the outbox.
 *
 * The outbox is replaced at link time by the three functions below, which
 * record every message: the test sees exactly what the door made, and
 * nothing of delivery.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "envelope.h"
#include "error.h"
#include "outbox.h"
#include "publish.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the outbox, recorded ---------------------------------------------- */

struct sent {
    enum qb_msg_kind kind;
    char id[96], type[64], key[160], vm[80];
    uint64_t sequence, epoch;
    json_t *envelope; /* parsed payload, NULL for an empty one */
    size_t len;
    void *transport; /* replies only */
};

static struct sent sent[64];
static size_t n_sent;

static void record(const struct qb_message *msg, void *transport)
{
    struct sent *s = &sent[n_sent++];

    assert_true(n_sent <= sizeof(sent) / sizeof(sent[0]));
    s->kind = msg->kind;
    snprintf(s->id, sizeof(s->id), "%s", msg->id);
    snprintf(s->type, sizeof(s->type), "%s", msg->type);
    snprintf(s->key, sizeof(s->key), "%s", msg->key);
    snprintf(s->vm, sizeof(s->vm), "%s", msg->vm);
    s->sequence = msg->sequence;
    s->epoch = msg->epoch;
    s->len = msg->len;
    s->envelope = msg->len ? json_loadb(msg->payload, msg->len, 0, NULL) : NULL;
    if (msg->len)
        assert_non_null(s->envelope);
    s->transport = transport;
}

int qb_outbox_send(struct qb_outbox *o, const struct qb_message *msg)
{
    (void)o;
    assert_true(msg->kind != QB_MSG_REPLY);
    record(msg, NULL);
    return QB_OK;
}

int qb_outbox_send_reply(struct qb_outbox *o, struct qb_transport *t, const struct qb_message *msg)
{
    (void)o;
    assert_int_equal(msg->kind, QB_MSG_REPLY);
    record(msg, t);
    return QB_OK;
}

/* The spool knows one VM, "spooled": epoch 7, last sequence 41. */
bool qb_outbox_recall_sequence(const struct qb_outbox *o, const char *vm, uint64_t *epoch,
                               uint64_t *seq)
{
    (void)o;
    if (strcmp(vm, "spooled") != 0)
        return false;
    *epoch = 7;
    *seq = 41;
    return true;
}

/* ---- fixtures ------------------------------------------------------------ */

static struct qb_config cfg;
static struct qb_publisher *pub;

/* The VM set, as the VM manager keeps it: names with an open stream, not retired. */
static const char *live[8];

static bool name_live(void *arg, const char *name)
{
    (void)arg;
    for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++)
        if (live[i] && strcmp(live[i], name) == 0)
            return true;
    return false;
}

static int open_stream(const char *name, struct qb_stream **out)
{
    int rc = qb_stream_open(pub, name, out);

    for (size_t i = 0; rc == QB_OK && i < sizeof(live) / sizeof(live[0]); i++)
        if (!live[i]) {
            live[i] = name;
            break;
        }
    return rc;
}

static void retire_stream(struct qb_stream *s, const char *name, bool remember)
{
    for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++)
        if (live[i] && strcmp(live[i], name) == 0) {
            live[i] = NULL;
            break;
        }
    qb_stream_retire(s, remember);
}

/* A stream freed without being retired (the test's end) leaves the VM set too. */
static void free_stream(struct qb_stream *s, const char *name)
{
    retire_stream(s, name, false);
    qb_stream_free(s);
}

static int setup(void **state)
{
    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.bridge_id = "br";
    cfg.schema_base_uri = "file:///schema/v1/";
    n_sent = 0;
    memset(live, 0, sizeof(live));
    return qb_publisher_new(&cfg, (struct qb_outbox *)&cfg, name_live, NULL, &pub) == QB_OK ? 0
                                                                                            : -1;
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_sent; i++)
        json_decref(sent[i].envelope);
    qb_publisher_free(pub);
    return 0;
}

static const char *env_str(const struct sent *s, const char *key)
{
    return json_string_value(json_object_get(s->envelope, key));
}

static void assert_id(const struct sent *s, uint64_t epoch, uint64_t seq, const char *suffix)
{
    char want[96];

    qb_envelope_format_id(epoch, seq, suffix, want, sizeof(want));
    assert_string_equal(s->id, want);
    if (s->envelope)
        assert_string_equal(env_str(s, "id"), want);
}

/* ---- cases --------------------------------------------------------------- */

static void test_stream_numbering(void **state)
{
    struct qb_stream *s;
    json_t *data = json_pack("{s:s}", "reason", "io-error");
    uint64_t origin = 0;

    (void)state;
    assert_int_equal(open_stream("vm1", &s), QB_OK);
    assert_string_equal(qb_stream_key(s), "br/vm1");
    assert_int_equal(qb_stream_sequence(s), 0);
    assert_int_equal(qb_publish_event(s, "qmp.vm.stopped", 1732242124, 461517, data, &origin), 1);
    assert_int_equal(origin, 1732242124461517ull);
    assert_int_equal(
        qb_publish_event(s, "bridge.vm.connected", QB_ENVELOPE_TIME_NOW, 0, data, &origin), 2);
    assert_true(origin > 1732242124461517ull); /* the bridge's clock */
    assert_int_equal(n_sent, 2);
    assert_int_equal(sent[0].kind, QB_MSG_EVENT);
    assert_string_equal(sent[0].key, "br/vm1");
    assert_string_equal(env_str(&sent[0], "subject"), "vm1");
    assert_string_equal(env_str(&sent[0], "type"), "qmp.vm.stopped");
    assert_string_equal(env_str(&sent[0], "time"), "2024-11-22T02:22:04.461517Z");
    assert_id(&sent[0], sent[0].epoch, 1, NULL);
    assert_id(&sent[1], sent[0].epoch, 2, NULL);

    /* the state as event and state copy: one sequence, the copy's id suffixed */
    uint64_t seq = qb_stream_next_sequence(s);
    assert_int_equal(seq, 3);
    assert_int_equal(qb_publish_state(s, QB_MSG_EVENT, seq, NULL, 1, 0, data, NULL, 0), QB_OK);
    assert_int_equal(qb_publish_state(s, QB_MSG_STATE, seq, ".state", 1, 0, NULL, "{\"a\":1}", 7),
                     QB_OK);
    assert_int_equal(sent[2].kind, QB_MSG_EVENT);
    assert_int_equal(sent[3].kind, QB_MSG_STATE);
    assert_string_equal(sent[3].type, "qmp.vm.state");
    assert_id(&sent[2], sent[0].epoch, 3, NULL);
    assert_id(&sent[3], sent[0].epoch, 3, ".state");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(sent[3].envelope, "data"), "a")), 1);

    /* clearing: a state message with no payload, under the current sequence */
    qb_publish_state_clear(s);
    assert_int_equal(sent[4].kind, QB_MSG_STATE);
    assert_int_equal(sent[4].len, 0);
    assert_id(&sent[4], sent[0].epoch, 3, ".clear");
    assert_int_equal(qb_stream_sequence(s), 3);
    free_stream(s, "vm1");
    json_decref(data);
}

static void test_continuing_numbering(void **state)
{
    struct qb_stream *a, *b, *c, *sp;
    uint64_t epoch;

    (void)state;
    assert_int_equal(open_stream("spooled", &sp), QB_OK);
    assert_int_equal(qb_publish_event(sp, "qmp.vm.resumed", 5, 0, NULL, NULL), 42);
    assert_int_equal(sent[0].epoch, 7);

    assert_int_equal(open_stream("vm1", &a), QB_OK);
    qb_publish_event(a, "qmp.vm.resumed", 5, 0, NULL, NULL);
    epoch = sent[1].epoch;
    assert_true(epoch > 7);
    retire_stream(a, "vm1", true);
    assert_false(qb_stream_superseded(a));
    /* the closing session's leftovers still go out and move the memo forward */
    assert_int_equal(qb_publish_event(a, "bridge.vm.disconnected", 6, 0, NULL, NULL), 2);
    qb_stream_free(a);
    assert_int_equal(open_stream("vm1", &b), QB_OK);
    assert_int_equal(qb_publish_event(b, "bridge.vm.connected", 7, 0, NULL, NULL), 3);
    assert_int_equal(sent[3].epoch, epoch);

    /* gone for good: no memo, a new epoch */
    retire_stream(b, "vm1", false);
    qb_stream_free(b);
    assert_int_equal(open_stream("vm1", &c), QB_OK);
    assert_int_equal(qb_publish_event(c, "bridge.vm.connected", 8, 0, NULL, NULL), 1);
    assert_true(sent[4].epoch != epoch);
    free_stream(c, "vm1");
    free_stream(sp, "spooled");
}

static void test_superseded_leftovers_dropped(void **state)
{
    struct qb_stream *old, *now;

    (void)state;
    assert_int_equal(open_stream("vm1", &old), QB_OK);
    qb_publish_event(old, "qmp.vm.resumed", 5, 0, NULL, NULL);
    retire_stream(old, "vm1", true);
    assert_int_equal(open_stream("vm1", &now), QB_OK);
    assert_true(qb_stream_superseded(old));
    assert_false(qb_stream_superseded(now));
    /* two incarnations numbering at once would hand out sequence 2 twice */
    assert_int_equal(qb_publish_event(old, "bridge.vm.disconnected", 6, 0, NULL, NULL), 0);
    assert_int_equal(n_sent, 1);
    assert_int_equal(qb_publish_event(now, "bridge.vm.connected", 7, 0, NULL, NULL), 2);
    qb_stream_free(old);
    free_stream(now, "vm1");
}

static void test_closing(void **state)
{
    struct qb_stream *a, *b;

    (void)state;
    assert_int_equal(open_stream("vm1", &a), QB_OK);
    qb_publish_event(a, "qmp.vm.resumed", 5, 0, NULL, NULL);
    qb_publisher_closing(pub);
    retire_stream(a, "vm1", true); /* at shutdown nothing is remembered */
    assert_int_equal(qb_publish_event(a, "bridge.vm.disconnected", 6, 0, NULL, NULL), 2);
    qb_stream_free(a);
    assert_int_equal(open_stream("vm1", &b), QB_OK);
    assert_int_equal(qb_stream_sequence(b), 0);
    free_stream(b, "vm1");
}

static void test_results(void **state)
{
    struct qb_stream *s;
    json_t *result = json_pack("{s:s, s:s}", "command", "cont", "status", "ok");
    int transport_token;
    struct qb_publish_reply reply = {(struct qb_transport *)&transport_token, "r/t", "c", 1};
    struct qb_publish_reply none = {0};

    (void)state;
    assert_int_equal(open_stream("vm1", &s), QB_OK);
    /* on the VM's stream, and the same envelope as the reply */
    assert_int_equal(qb_publish_result(pub, s, "vm1", result, &reply), QB_OK);
    assert_int_equal(n_sent, 2);
    assert_int_equal(sent[0].kind, QB_MSG_EVENT);
    assert_int_equal(sent[1].kind, QB_MSG_REPLY);
    assert_ptr_equal(sent[1].transport, &transport_token);
    assert_string_equal(sent[0].id, sent[1].id);
    assert_id(&sent[0], sent[0].epoch, 1, NULL);
    assert_string_equal(env_str(&sent[0], "type"), "bridge.command.result");
    assert_int_equal(qb_stream_sequence(s), 1);

    /* no VM: only the reply, numbered by the bridge; a bad name is "unknown" */
    assert_int_equal(qb_publish_result(pub, NULL, "no/such vm", result, &reply), QB_OK);
    assert_int_equal(qb_publish_result(pub, NULL, "ghost", result, &reply), QB_OK);
    assert_int_equal(n_sent, 4);
    assert_int_equal(sent[2].kind, QB_MSG_REPLY);
    assert_string_equal(env_str(&sent[2], "subject"), "unknown");
    assert_string_equal(sent[2].key, "br/unknown");
    assert_string_equal(env_str(&sent[3], "subject"), "ghost");
    assert_true(sent[2].epoch < sent[0].epoch); /* the bridge's epoch is below every VM's */
    assert_id(&sent[2], sent[2].epoch, 1, NULL);
    assert_id(&sent[3], sent[2].epoch, 2, NULL);
    assert_int_equal(qb_stream_sequence(s), 1);

    /* no transport to answer on: the stream alone */
    assert_int_equal(qb_publish_result(pub, s, "vm1", result, &none), QB_OK);
    assert_int_equal(n_sent, 5);
    assert_int_equal(sent[4].kind, QB_MSG_EVENT);
    free_stream(s, "vm1");
    json_decref(result);
}

/*
 * A command's result on a removed session's stream is one of its leftovers:
 * it moves the remembered numbering forward, or the VM's next session would
 * give its sequence to another envelope. Once the VM is back with a new
 * session, the old one must not number at all: the result goes as a reply,
 * numbered by the bridge.
 */
static void test_result_on_retired_stream(void **state)
{
    struct qb_stream *old, *now, *again;
    json_t *result = json_pack("{s:s, s:s}", "command", "cont", "status", "rejected");
    int transport_token;
    struct qb_publish_reply reply = {(struct qb_transport *)&transport_token, "r/t", "c", 1};
    uint64_t epoch;
    size_t n;

    (void)state;
    assert_int_equal(open_stream("vm1", &old), QB_OK);
    assert_int_equal(qb_publish_event(old, "qmp.vm.resumed", 5, 0, NULL, NULL), 1);
    epoch = sent[0].epoch;
    retire_stream(old, "vm1", true);
    /* a command queued for the VM, rejected after its removal: sequence 2 */
    assert_int_equal(qb_publish_result(pub, old, "vm1", result, &reply), QB_OK);
    assert_int_equal(n_sent, 3);
    assert_id(&sent[1], epoch, 2, NULL);
    qb_stream_free(old);
    assert_int_equal(open_stream("vm1", &now), QB_OK);
    assert_int_equal(qb_publish_event(now, "bridge.vm.connected", 7, 0, NULL, NULL), 3);

    /* the VM came back while the old session still had a result to give */
    retire_stream(now, "vm1", true);
    assert_int_equal(open_stream("vm1", &again), QB_OK);
    n = n_sent;
    assert_int_equal(qb_publish_result(pub, now, "vm1", result, &reply), QB_OK);
    assert_int_equal(n_sent, n + 1);
    assert_int_equal(sent[n].kind, QB_MSG_REPLY);
    assert_true(sent[n].epoch != epoch);
    assert_int_equal(qb_publish_event(again, "bridge.vm.connected", 8, 0, NULL, NULL), 4);
    qb_stream_free(now);
    free_stream(again, "vm1");
    json_decref(result);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(qb_stream_name_valid("vm-1_a.b"));
    assert_false(qb_stream_name_valid(""));
    assert_false(qb_stream_name_valid("a/b"));
    assert_false(qb_stream_name_valid("a b"));
    assert_true(
        qb_stream_name_valid("0123456789012345678901234567890123456789012345678901234567890123"));
    assert_false(
        qb_stream_name_valid("01234567890123456789012345678901234567890123456789012345678901234"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_numbering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_continuing_numbering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_superseded_leftovers_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_result_on_retired_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
