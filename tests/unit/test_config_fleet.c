/*
 * test_config_fleet.c - what a fleet's configuration needs beyond one file (bridge/config.c,
 * config_dropins.c, config_ref.c): drop-ins merged over the main file, and ${env:},
 * ${file:}, ${cred:} references in values.
 *
 * Each test writes real files in a fresh temporary directory and loads them with
 * qb_config_load_file, so directory listing, name order and file modes are the real ones.
 * Every error is compared in full: the message must name the drop-in and its line:column.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "config_dropins.h"
#include "error.h"
#include "kafka_config.h"

/* A transport's own keys: the loader hangs its backend's struct on t->backend. */
static const struct qb_kafka_config *kafka_of(const struct qb_transport_config *t)
{
    assert_string_equal(t->type, "kafka");
    return t->backend;
}

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/qb-test-fleet-XXXXXX");
    assert_non_null(mkdtemp(tmp));
    unsetenv("CREDENTIALS_DIRECTORY");
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    (void)state;
    nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Writes text to tmp/name (creating tmp/conf.d when name is under it) with mode. */
static void put(const char *name, const char *text, mode_t mode)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/conf.d", tmp);
    if (strncmp(name, "conf.d/", 7) == 0)
        mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/%s", tmp, name);
    assert_non_null(f = fopen(path, "w"));
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static const char *at(const char *name)
{
    static char path[2][512];
    static int which;

    which ^= 1;
    snprintf(path[which], sizeof(path[which]), "%s/%s", tmp, name);
    return path[which];
}

static struct qb_config *load_ok(void)
{
    struct qb_config *cfg = NULL;
    char err[1024] = "";
    int rc = qb_config_load_file(at("qmp-bridge.yaml"), &cfg, err, sizeof(err));

    if (rc != QB_OK)
        fail_msg("unexpected error %d: %s", rc, err);
    return cfg;
}

/* Loads tmp/qmp-bridge.yaml expecting QB_ECONFIG and the message expected, in which "@" stands
 * for the temporary directory. */
static void load_bad(const char *expected)
{
    struct qb_config *cfg = (struct qb_config *)1;
    char err[1024] = "", want[1024];
    size_t used = 0;
    int rc;

    for (const char *p = expected; *p && used + sizeof(tmp) < sizeof(want); p++) {
        if (*p == '@')
            used += (size_t)snprintf(want + used, sizeof(want) - used, "%s", tmp);
        else
            want[used++] = *p;
    }
    want[used] = '\0';
    rc = qb_config_load_file(at("qmp-bridge.yaml"), &cfg, err, sizeof(err));
    if (rc != QB_ECONFIG || strcmp(err, want) != 0)
        fail_msg("rc %d\n  got      \"%s\"\n  expected \"%s\"", rc, err, want);
    assert_null(cfg);
}

/* ---- where drop-ins live ---- */

static void dir_is(const char *main_path, const char *expected)
{
    char *dir = NULL, err[256] = "";

    assert_int_equal(qb_config_dropin_dir(main_path, &dir, err, sizeof(err)), QB_OK);
    assert_string_equal(dir, expected);
    free(dir);
}

static void test_dropin_dir(void **state)
{
    char *dir = (char *)1, err[256] = "";

    (void)state;
    dir_is("/etc/qmp-bridge/qmp-bridge.yaml", "/etc/qmp-bridge/conf.d");
    dir_is("qmp-bridge.yaml", "conf.d");
    /* a template instance's file: its own directory, never the shared conf.d */
    dir_is("/etc/qmp-bridge/a.yaml", "/etc/qmp-bridge/a.d");
    dir_is("/etc/qmp-bridge/b.yml", "/etc/qmp-bridge/b.d");
    dir_is("/srv/bridge", "/srv/bridge.d");
    dir_is("/srv/qmp-bridge.yaml.orig", "/srv/qmp-bridge.yaml.orig.d");
    assert_int_equal(qb_config_dropin_dir("/etc/qmp-bridge/conf.yaml", &dir, err, sizeof(err)),
                     QB_ECONFIG);
    assert_null(dir);
    assert_string_equal(err, "/etc/qmp-bridge/conf.yaml: a configuration named 'conf.yaml' would "
                             "read the drop-ins of qmp-bridge.yaml in /etc/qmp-bridge/conf.d/; "
                             "rename it");
}

/* ---- merge rules ---- */

static void test_merge_rules(void **state)
{
    struct qb_config *cfg;

    (void)state;
    put("qmp-bridge.yaml",
        "bridge: {id: host-a, log_level: info}\n"
        "qmp: {command_timeout: 5s, connect_timeout: 2s}\n"
        "vms: [{name: vm1, qmp: 'unix:/run/vm1'}]\n"
        "events: {exclude: [A, B]}\n"
        "commands: {enabled: true, allow: [cont]}\n"
        "transports: [{type: stdout}]\n",
        0600);
    put("conf.d/20-late.yaml", "bridge: {log_level: warn}\nvms:\n  - {name: vm3, qmp: 'unix:/c'}\n",
        0600);
    put("conf.d/10-early.yaml",
        "bridge: {log_level: debug}\n"
        "qmp: {connect_timeout: 1s}\n"
        "vms: [{name: vm2, qmp: 'unix:/b'}]\n"
        "events: {exclude: [C]}\n"
        "commands: {allow: [stop]}\n"
        "transports: [{type: mqtt, name: m}]\n"
        "spool: {directory: /var/spool/x}\n",
        0600);
    /* not drop-ins: hidden files, other suffixes, backups */
    put("conf.d/.05-hidden.yaml", "bridge: {id: hidden}\n", 0600);
    put("conf.d/15-backup.yaml~", "bridge: {id: backup}\n", 0600);
    put("conf.d/15-old.yaml.dpkg-old", "bridge: {id: old}\n", 0600);
    put("conf.d/README", "not yaml: [", 0600);

    cfg = load_ok();
    assert_int_equal(cfg->n_files, 3);
    assert_string_equal(cfg->files[0], at("qmp-bridge.yaml"));
    assert_string_equal(cfg->files[1], at("conf.d/10-early.yaml"));
    assert_string_equal(cfg->files[2], at("conf.d/20-late.yaml"));
    /* scalars: the last file wins; maps merge key by key */
    assert_string_equal(cfg->bridge_id, "host-a");
    assert_int_equal(cfg->log_level, QB_LOG_WARN);
    assert_int_equal(cfg->qmp_command_timeout_ms, 5000);
    assert_int_equal(cfg->qmp_connect_timeout_ms, 1000);
    assert_string_equal(cfg->spool_directory, "/var/spool/x");
    assert_true(cfg->commands.enabled);
    /* vms and transports append in file order, each remembering its file */
    assert_int_equal(cfg->n_vms, 3);
    assert_string_equal(cfg->vms[0].name, "vm1");
    assert_string_equal(cfg->vms[1].name, "vm2");
    assert_string_equal(cfg->vms[2].name, "vm3");
    assert_string_equal(cfg->vms[0].file, at("qmp-bridge.yaml"));
    assert_string_equal(cfg->vms[2].file, at("conf.d/20-late.yaml"));
    assert_int_equal(cfg->n_transports, 2);
    assert_string_equal(cfg->transports[0].name, "stdout");
    assert_string_equal(cfg->transports[1].name, "m");
    assert_string_equal(cfg->transports[1].file, at("conf.d/10-early.yaml"));
    assert_int_equal(cfg->transports[1].line, 6);
    /* every other list is one value: replaced, not appended */
    assert_int_equal(cfg->n_events_exclude, 1);
    assert_string_equal(cfg->events_exclude[0], "C");
    assert_int_equal(cfg->commands.allow_mask, 1u << QB_CMD_STOP);
    qb_config_free(cfg);
}

/* A null adds nothing to a section or to vms, and sets a scalar back to its default. */
static void test_merge_nulls(void **state)
{
    struct qb_config *cfg;

    (void)state;
    put("qmp-bridge.yaml",
        "bridge: {id: host-a, log_level: debug}\nqmp: {command_timeout: 5s}\n"
        "vms: [{name: vm1, qmp: 'unix:/a'}]\n",
        0600);
    put("conf.d/10.yaml", "qmp:\nvms:\nbridge: {log_level: }\n", 0600);
    put("conf.d/20-empty.yaml", "", 0600);
    put("conf.d/30-comment.yaml", "# nothing here yet\n", 0600);
    cfg = load_ok();
    assert_int_equal(cfg->qmp_command_timeout_ms, 5000);
    assert_int_equal(cfg->n_vms, 1);
    assert_int_equal(cfg->log_level, QB_LOG_INFO);
    qb_config_free(cfg);
}

/* The main file may leave everything to drop-ins; no drop-in directory means none. */
static void test_main_empty_or_alone(void **state)
{
    struct qb_config *cfg;

    (void)state;
    put("qmp-bridge.yaml", "bridge: {id: alone}\n", 0600);
    cfg = load_ok();
    assert_int_equal(cfg->n_files, 1);
    qb_config_free(cfg);
    put("qmp-bridge.yaml", "# all in conf.d\n", 0600);
    put("conf.d/00-id.yaml", "bridge: {id: from-dropin}\n", 0600);
    cfg = load_ok();
    assert_string_equal(cfg->bridge_id, "from-dropin");
    qb_config_free(cfg);
}

/* qb_config_load_string never looks for drop-ins, whatever the name. */
static void test_load_string_has_no_dropins(void **state)
{
    static const char yaml[] = "bridge: {id: s}\n";
    struct qb_config *cfg = NULL;
    char err[512];

    (void)state;
    put("conf.d/10.yaml", "bridge: {id: dropin}\n", 0600);
    assert_int_equal(
        qb_config_load_string(at("qmp-bridge.yaml"), yaml, strlen(yaml), &cfg, err, sizeof(err)),
        QB_OK);
    assert_string_equal(cfg->bridge_id, "s");
    assert_int_equal(cfg->n_files, 1);
    qb_config_free(cfg);
}

static void test_dropin_errors(void **state)
{
    char big[256], name[64];

    (void)state;
    put("qmp-bridge.yaml", "bridge: {id: a}\nvms: [{name: vm1, qmp: 'unix:/a'}]\n", 0600);

    put("conf.d/10-x.yaml", "qmp:\n  nope: 1\n", 0600);
    load_bad("@/conf.d/10-x.yaml:2:3: qmp.nope: unknown key");
    put("conf.d/10-x.yaml", "qmp: {command_timeout: soon}\n", 0600);
    load_bad("@/conf.d/10-x.yaml:1:24: qmp.command_timeout: expected a duration such as 250ms, "
             "30s, 5m or 2h, got 'soon'");
    put("conf.d/10-x.yaml", "qmp: [\n", 0600);
    load_bad("@/conf.d/10-x.yaml:2:1: qmp[0]: YAML syntax error: did not find expected node "
             "content (while parsing a flow node at 2:1)");
    put("conf.d/10-x.yaml", "qmp: {command_timeout: 1s}\nqmp: {connect_timeout: 1s}\n", 0600);
    load_bad("@/conf.d/10-x.yaml:2:1: qmp: duplicate key (first at 1:1)");
    put("conf.d/10-x.yaml", "- just a list\n", 0600);
    load_bad("@/conf.d/10-x.yaml:1:1: (root): expected a mapping, got a list");
    put("conf.d/10-x.yaml", "bridge: {id: &x a}\n", 0600);
    load_bad("@/conf.d/10-x.yaml:1:14: bridge.id: anchors and aliases are not supported");
    /* a VM defined twice: both places are named */
    put("conf.d/10-x.yaml", "vms:\n  - {name: vm1, qmp: 'unix:/b'}\n", 0600);
    load_bad("@/conf.d/10-x.yaml:2:12: vms[1].name: duplicate VM name 'vm1' (also vms[0] at "
             "@/qmp-bridge.yaml:2:14)");
    /* a later drop-in's error is its own */
    put("conf.d/10-x.yaml", "qmp: {command_timeout: 1s}\n", 0600);
    put("conf.d/20-y.yaml", "bridge: {id: 'not ok'}\n", 0600);
    load_bad("@/conf.d/20-y.yaml:1:14: bridge.id: expected 1 to 64 characters from [A-Za-z0-9._-], "
             "got 'not ok'");
    remove(at("conf.d/20-y.yaml"));
    /* bounds: the size cap holds for each drop-in, the number of drop-ins is capped */
    {
        size_t n = 1024 * 1024 + 1;
        char *text = malloc(n + 1);

        memset(text, '#', n);
        text[n] = '\0';
        put("conf.d/30-big.yaml", text, 0600);
        free(text);
        load_bad("@/conf.d/30-big.yaml:1:1: (root): the file is larger than 1048576 bytes");
        remove(at("conf.d/30-big.yaml"));
    }
    for (int i = 0; i < QB_CONFIG_MAX_DROPINS; i++) {
        snprintf(name, sizeof(name), "conf.d/%02d-n.yaml", i + 11);
        put(name, "", 0600);
    }
    snprintf(big, sizeof(big), "@/conf.d: more than %d drop-ins", QB_CONFIG_MAX_DROPINS);
    load_bad(big);
    for (int i = 0; i < QB_CONFIG_MAX_DROPINS; i++) {
        snprintf(name, sizeof(name), "conf.d/%02d-n.yaml", i + 11);
        remove(at(name));
    }
    /* a directory named like a drop-in, a drop-in directory that is a file */
    mkdir(at("conf.d/40-dir.yaml"), 0700);
    load_bad("@/conf.d/40-dir.yaml: not a regular file");
    rmdir(at("conf.d/40-dir.yaml"));
    remove(at("conf.d/10-x.yaml"));
    rmdir(at("conf.d"));
    put("conf.d", "", 0600);
    load_bad("@/conf.d: cannot read the drop-in directory: Not a directory");
}

/* ---- references ---- */

static void test_refs_env_and_escapes(void **state)
{
    struct qb_config *cfg;

    (void)state;
    setenv("QB_T_HOST", "broker.example", 1);
    setenv("QB_T_EMPTY", "", 1);
    put("qmp-bridge.yaml",
        "bridge: {id: a, schema_base_uri: 'literal $${env:QB_T_HOST} and $5 $'}\n"
        "transports:\n"
        "  - type: kafka\n"
        "    brokers: ${env:QB_T_HOST}:9092,${env:QB_T_HOST}:9093\n"
        "    properties: {client.rack: \"${env:QB_T_EMPTY}x\"}\n",
        0600);
    cfg = load_ok();
    assert_string_equal(cfg->schema_base_uri, "literal ${env:QB_T_HOST} and $5 $");
    assert_string_equal(kafka_of(&cfg->transports[0])->brokers,
                        "broker.example:9092,broker.example:9093");
    assert_string_equal(kafka_of(&cfg->transports[0])->properties[0].value, "x");
    qb_config_free(cfg);

    /* keys are never expanded */
    put("qmp-bridge.yaml", "bridge: {id: a}\n${env:QB_T_HOST}: 1\n", 0600);
    load_bad("@/qmp-bridge.yaml:2:1: ${env:QB_T_HOST}: unknown key");

    put("qmp-bridge.yaml", "bridge: {id: a, schema_base_uri: '${env:QB_T_UNSET}'}\n", 0600);
    unsetenv("QB_T_UNSET");
    load_bad("@/qmp-bridge.yaml:1:34: bridge.schema_base_uri: ${env:QB_T_UNSET}: environment "
             "variable QB_T_UNSET is not set");
    /* an empty expansion is an empty string, not null: the key's check still applies */
    put("qmp-bridge.yaml", "bridge: {id: '${env:QB_T_EMPTY}'}\n", 0600);
    load_bad("@/qmp-bridge.yaml:1:14: bridge.id: expected 1 to 64 characters from "
             "[A-Za-z0-9._-], got the value of '${env:QB_T_EMPTY}'");
    put("qmp-bridge.yaml", "bridge: {id: 'x${env:1X}'}\n", 0600);
    load_bad("@/qmp-bridge.yaml:1:14: bridge.id: ${env:1X}: expected an environment variable "
             "name ([A-Za-z_][A-Za-z0-9_]*)");
    put("qmp-bridge.yaml", "bridge: {id: '${vault:x}'}\n", 0600);
    load_bad("@/qmp-bridge.yaml:1:14: bridge.id: ${vault:x}: unknown reference (expected "
             "${env:NAME}, ${file:/path} or ${cred:NAME}; write $${ for a literal ${)");
    put("qmp-bridge.yaml", "bridge: {id: 'a${env:X'}\n", 0600);
    load_bad("@/qmp-bridge.yaml:1:14: bridge.id: '${env:X': unterminated reference (no closing "
             "'}'; write $${ for a literal ${)");
    /* a value a drop-in replaces is never expanded */
    put("qmp-bridge.yaml", "bridge: {id: '${env:QB_T_UNSET}'}\n", 0600);
    put("conf.d/10.yaml", "bridge: {id: b}\n", 0600);
    cfg = load_ok();
    assert_string_equal(cfg->bridge_id, "b");
    qb_config_free(cfg);
    /* the drop-in's own references, errors at the drop-in */
    put("conf.d/10.yaml", "bridge: {id: '${env:QB_T_UNSET}'}\n", 0600);
    load_bad("@/conf.d/10.yaml:1:14: bridge.id: ${env:QB_T_UNSET}: environment variable "
             "QB_T_UNSET is not set");
    unsetenv("QB_T_HOST");
    unsetenv("QB_T_EMPTY");
}

static void test_refs_files(void **state)
{
    struct qb_config *cfg;
    char yaml[1024];

    (void)state;
    put("sasl.pw", "s3cret\n\n", 0600);
    put("user", "alice\n", 0600);
    snprintf(yaml, sizeof(yaml),
             "bridge: {id: a}\n"
             "transports:\n"
             "  - type: kafka\n"
             "    brokers: b:9092\n"
             "    properties:\n"
             "      sasl.username: ${file:%s/user}\n"
             "      sasl.password: \"${file:%s/sasl.pw}\"\n",
             tmp, tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    cfg = load_ok();
    assert_string_equal(kafka_of(&cfg->transports[0])->properties[0].value, "alice");
    /* exactly one trailing newline is dropped */
    assert_string_equal(kafka_of(&cfg->transports[0])->properties[1].value, "s3cret\n");
    qb_config_free(cfg);

    /* missing, relative, others-readable, NUL: each names the file and the key's place */
    snprintf(yaml, sizeof(yaml), "bridge: {id: a, schema_base_uri: '${file:%s/nope}'}\n", tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    load_bad("@/qmp-bridge.yaml:1:34: bridge.schema_base_uri: ${file:@/nope}: cannot read "
             "'@/nope': No such file or directory");
    put("qmp-bridge.yaml", "bridge: {id: a, schema_base_uri: '${file:pw}'}\n", 0600);
    load_bad("@/qmp-bridge.yaml:1:34: bridge.schema_base_uri: ${file:pw}: expected an absolute "
             "path");
    put("open.pw", "x\n", 0644);
    snprintf(yaml, sizeof(yaml), "bridge: {id: a, schema_base_uri: '${file:%s/open.pw}'}\n", tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    load_bad("@/qmp-bridge.yaml:1:34: bridge.schema_base_uri: ${file:@/open.pw}: '@/open.pw': "
             "mode 0644 lets other users read it; chmod o-rwx");
    {
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/nul.pw", tmp);
        assert_non_null(f = fopen(path, "w"));
        fwrite("a\0b", 1, 3, f);
        fclose(f);
        chmod(path, 0600);
    }
    snprintf(yaml, sizeof(yaml), "bridge: {id: a, schema_base_uri: '${file:%s/nul.pw}'}\n", tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    load_bad("@/qmp-bridge.yaml:1:34: bridge.schema_base_uri: ${file:@/nul.pw}: '@/nul.pw' "
             "contains a NUL byte");
    /* a value from a file that fails its key's check is never quoted back */
    put("bad.id", "not an id!\n", 0600);
    snprintf(yaml, sizeof(yaml), "bridge: {id: '${file:%s/bad.id}'}\n", tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    load_bad("@/qmp-bridge.yaml:1:14: bridge.id: expected 1 to 64 characters from "
             "[A-Za-z0-9._-], got the value of '${file:@/bad.id}'");
}

/* The engine's size cap holds for a referenced file and for all references together. */
static void test_refs_bounds(void **state)
{
    size_t n = 700 * 1024;
    char *text = malloc(n + 1), yaml[1024];
    struct qb_config *cfg;

    (void)state;
    memset(text, 'k', n);
    text[n] = '\0';
    put("big.pw", text, 0600);
    snprintf(yaml, sizeof(yaml), "bridge: {id: a, schema_base_uri: '${file:%s/big.pw}'}\n", tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    cfg = load_ok();
    assert_int_equal(strlen(cfg->schema_base_uri), n);
    qb_config_free(cfg);
    snprintf(yaml, sizeof(yaml),
             "bridge: {id: a, schema_base_uri: '${file:%s/big.pw}'}\n"
             "discovery: {directory: '${file:%s/big.pw}'}\n",
             tmp, tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    load_bad("@/qmp-bridge.yaml:2:24: discovery.directory: ${file:@/big.pw}: '@/big.pw' is "
             "larger than the 331776 bytes references may still add");
    free(text);
    text = malloc(1024 * 1024 + 2);
    memset(text, 'k', 1024 * 1024 + 1);
    text[1024 * 1024 + 1] = '\0';
    put("huge.pw", text, 0600);
    free(text);
    snprintf(yaml, sizeof(yaml), "bridge: {id: a, schema_base_uri: '${file:%s/huge.pw}'}\n", tmp);
    put("qmp-bridge.yaml", yaml, 0600);
    load_bad("@/qmp-bridge.yaml:1:34: bridge.schema_base_uri: ${file:@/huge.pw}: '@/huge.pw' is "
             "larger than the 1048576 bytes references may still add");
}

/* ${cred:NAME} reads $CREDENTIALS_DIRECTORY/NAME, as systemd's LoadCredential= sets it up. */
static void test_refs_credentials(void **state)
{
    struct qb_config *cfg;

    (void)state;
    put("qmp-bridge.yaml",
        "bridge: {id: a}\n"
        "transports: [{type: kafka, brokers: 'b:1', properties: {sasl.password: "
        "'${cred:kafka.pw}'}}]\n",
        0600);
    load_bad("@/qmp-bridge.yaml:2:72: transports[0].properties.sasl.password: ${cred:kafka.pw}: "
             "$CREDENTIALS_DIRECTORY is not set (the bridge is not running under a systemd unit "
             "with LoadCredential=kafka.pw:/path/to/the/secret)");
    mkdir(at("creds"), 0700);
    setenv("CREDENTIALS_DIRECTORY", at("creds"), 1);
    load_bad("@/qmp-bridge.yaml:2:72: transports[0].properties.sasl.password: ${cred:kafka.pw}: "
             "cannot read '@/creds/kafka.pw': No such file or directory");
    put("creds/kafka.pw", "hunter2\n", 0400);
    cfg = load_ok();
    assert_string_equal(kafka_of(&cfg->transports[0])->properties[0].value, "hunter2");
    qb_config_free(cfg);
    put("qmp-bridge.yaml", "bridge: {id: '${cred:../x}'}\n", 0600);
    load_bad("@/qmp-bridge.yaml:1:14: bridge.id: ${cred:../x}: expected a credential name "
             "([A-Za-z0-9_.-], not . or ..)");
    unsetenv("CREDENTIALS_DIRECTORY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropin_dir),
        cmocka_unit_test_setup_teardown(test_merge_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_nulls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_main_empty_or_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_string_has_no_dropins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropin_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refs_env_and_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refs_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refs_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refs_credentials, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
