/*
 * command.c - inbound command message -> validated, authorised struct qb_command.
 *
 * The message is untrusted bytes from a broker, so every step is bounded and
 * ordered so that cheap checks run before expensive ones: size, a nesting
 * pre-scan (jansson recurses, and no command needs more than a few levels),
 * JSON, the CloudEvents attributes, the command name, policy (enabled, allow
 * list, age), the signature, and only then the arguments. Attributes are read
 * before they are judged so that a rejection can still name the command's id.
 *
 * Arguments are described by one table per command (name, type, where the
 * value goes, required or member of an exactly-one-of group); adding a command
 * is a row in commands[] plus its argument table, with no new code path.
 * Limits that need the disk's current size (max_size, max_growth, shrink) are
 * checked by the executor, which knows it.
 */
#include "command.h"
#include "command_canonical.h"
#include "error.h"
#include "utf8.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Commands are a few hundred bytes and three levels deep; a deeper message is hostile. */
#define QB_CMD_MAX_DEPTH 8
#define QB_CMD_MAX_ID QB_CMD_ID_MAX
#define QB_CMD_MAX_STRING 128
#define QB_CMD_TYPE_PREFIX "qmp.command."
/* How much of an offending value is quoted back in a message. */
#define QB_CMD_QUOTE_MAX 64

/* ------------------------------------------------------------------------ */
/* The command table                                                         */

enum arg_type {
    ARG_STRING, /* non-empty string of at most QB_CMD_MAX_STRING bytes -> char * */
    ARG_SIZE,   /* integer >= 1 -> uint64_t */
    ARG_UINT,   /* integer >= 0 -> uint64_t */
    ARG_BOOL,   /* true/false -> bool */
};

/*
 * One argument. group 0: required or optional on its own; group n > 0: exactly
 * one member of group n must be present. has_offset, when not 0, is a bool
 * set when the argument was given (0 is the id member, never such a flag).
 */
struct arg_spec {
    const char *name;
    enum arg_type type;
    size_t offset;
    size_t has_offset;
    unsigned group;
    bool required;
};

#define ARG(n, t, member, ...)                                                                     \
    {                                                                                              \
        .name = (n), .type = (t), .offset = offsetof(struct qb_command, member), __VA_ARGS__       \
    }

_Static_assert(offsetof(struct qb_command, id) == 0, "has_offset 0 means no flag");

static const struct arg_spec no_args[] = {{0}};

static const struct arg_spec resize_args[] = {
    ARG("device", ARG_STRING, device, .group = 1),
    ARG("node_name", ARG_STRING, node_name, .group = 1),
    ARG("size", ARG_SIZE, size, .group = 2, .has_offset = offsetof(struct qb_command, has_size)),
    ARG("grow_by", ARG_SIZE, grow_by, .group = 2,
        .has_offset = offsetof(struct qb_command, has_grow_by)),
    ARG("force", ARG_BOOL, force),
    {0},
};

static const struct arg_spec job_args[] = {
    ARG("job", ARG_STRING, job, .required = true),
    {0},
};

static const struct arg_spec threshold_args[] = {
    ARG("node_name", ARG_STRING, node_name, .required = true),
    ARG("threshold", ARG_UINT, threshold, .required = true),
    {0},
};

static const struct {
    const char *name;
    const struct arg_spec *args;
} commands[QB_CMD__COUNT] = {
    [QB_CMD_RESIZE_AND_CONT] = {"resize-and-cont", resize_args},
    [QB_CMD_CONT] = {"cont", no_args},
    [QB_CMD_STOP] = {"stop", no_args},
    [QB_CMD_BLOCK_JOB_RESUME] = {"block-job-resume", job_args},
    [QB_CMD_BLOCK_JOB_PAUSE] = {"block-job-pause", job_args},
    [QB_CMD_BLOCK_JOB_CANCEL] = {"block-job-cancel", job_args},
    [QB_CMD_BLOCK_JOB_COMPLETE] = {"block-job-complete", job_args},
    [QB_CMD_SET_WRITE_THRESHOLD] = {"set-write-threshold", threshold_args},
    [QB_CMD_COLO_LOST_HEARTBEAT] = {"colo-lost-heartbeat", no_args},
    [QB_CMD_QUERY_STATE] = {"query-state", no_args},
};

const char *qb_cmd_name_str(enum qb_cmd_name name)
{
    if ((unsigned)name >= QB_CMD__COUNT)
        return NULL;
    return commands[name].name;
}

int qb_cmd_name_parse(const char *text, enum qb_cmd_name *out)
{
    for (unsigned i = 0; text && i < QB_CMD__COUNT; i++) {
        if (strcmp(text, commands[i].name) == 0) {
            *out = (enum qb_cmd_name)i;
            return QB_OK;
        }
    }
    return QB_ENOTFOUND;
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

static int reject(struct qb_command_error *err, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fills err (when given) with a printable-ASCII message. Always returns QB_EINVAL. */
static int reject(struct qb_command_error *err, const char *cls, const char *fmt, ...)
{
    va_list ap;

    if (!err)
        return QB_EINVAL;
    err->cls = cls;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    /* jansson's error text can quote raw input bytes; the message goes into a JSON result */
    for (char *p = err->message; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    return QB_EINVAL;
}

/*
 * Copies at most QB_CMD_QUOTE_MAX bytes of text into buf (>= QB_CMD_QUOTE_MAX + 4)
 * with anything but printable ASCII replaced, so a message stays one safe line.
 */
static const char *quote(char *buf, const char *text)
{
    size_t i;

    for (i = 0; text[i] && i < QB_CMD_QUOTE_MAX; i++)
        buf[i] = ((unsigned char)text[i] < 0x20 || (unsigned char)text[i] >= 0x7f) ? '?' : text[i];
    buf[i] = '\0';
    if (text[i])
        strcpy(buf + i, "...");
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Small parsers                                                             */

/*
 * Returns the deepest nesting of [ and { outside strings, stopping early once
 * it passes limit. Runs before jansson so a 10000-deep message costs one scan.
 */
static size_t nesting_depth(const char *buf, size_t len, size_t limit)
{
    size_t depth = 0, max = 0;
    bool in_string = false;

    for (size_t i = 0; i < len && max <= limit; i++) {
        char ch = buf[i];

        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '{' || ch == '[') {
            if (++depth > max)
                max = depth;
        } else if ((ch == '}' || ch == ']') && depth > 0) {
            depth--;
        }
    }
    return max;
}

/* Reads exactly n digits at *p into *out and advances *p. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        char ch = (*p)[i];

        if (ch < '0' || ch > '9')
            return false;
        v = v * 10 + (ch - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool expect_char(const char **p, const char *set)
{
    if (!**p || !strchr(set, **p))
        return false;
    (*p)++;
    return true;
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

    return month == 2 && leap ? 29 : days[month - 1];
}

/*
 * Strict RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm), T and
 * Z in either case (section 5.6). The fraction is kept to the microsecond. A leap
 * second (:60) is accepted and lands on the next second, as timegm does.
 */
static bool parse_rfc3339(const char *text, int64_t *out, int32_t *out_usec)
{
    const char *p = text;
    int year, month, day, hour, minute, second, off_h = 0, off_m = 0, sign = 0;
    int32_t usec = 0, scale = 100000;
    struct tm tm = {0};
    time_t t;

    if (!digits(&p, 4, &year) || !expect_char(&p, "-") || !digits(&p, 2, &month) ||
        !expect_char(&p, "-") || !digits(&p, 2, &day) || !expect_char(&p, "Tt") ||
        !digits(&p, 2, &hour) || !expect_char(&p, ":") || !digits(&p, 2, &minute) ||
        !expect_char(&p, ":") || !digits(&p, 2, &second))
        return false;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return false;
        for (; *p >= '0' && *p <= '9'; p++, scale /= 10)
            usec += (*p - '0') * scale;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else {
        sign = *p == '+' ? 1 : *p == '-' ? -1 : 0;
        if (!sign)
            return false;
        p++;
        if (!digits(&p, 2, &off_h) || !expect_char(&p, ":") || !digits(&p, 2, &off_m))
            return false;
    }
    if (*p || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
        minute > 59 || second > 60 || off_h > 23 || off_m > 59)
        return false;
    tm.tm_year = year - 1900;
    tm.tm_mon = month - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = minute;
    tm.tm_sec = second;
    t = timegm(&tm);
    /* local = UTC + offset, so UTC = local - offset */
    *out = (int64_t)t - sign * (int64_t)(off_h * 3600 + off_m * 60);
    *out_usec = usec;
    return true;
}

static bool valid_vm_name(const char *text)
{
    size_t len = strlen(text);

    return len >= 1 && len <= 64 &&
           strspn(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == len;
}

/* ------------------------------------------------------------------------ */
/* Signing                                                                   */

/* HMAC-SHA256 of text as lower-case hex into hex (at least 65 bytes). */
static int hmac_hex(const unsigned char *key, size_t key_len, const char *text, size_t len,
                    char *hex)
{
    static const unsigned char empty_key[1];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    if (!HMAC(EVP_sha256(), key ? key : empty_key, (int)key_len, (const unsigned char *)text, len,
              md, &md_len))
        return QB_ENOMEM;
    for (unsigned i = 0; i < md_len; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return QB_OK;
}

int qb_command_sign(const json_t *command, const unsigned char *key, size_t key_len, char *hex,
                    size_t hexlen)
{
    char *text;
    size_t len;
    int rc;

    if (!json_is_object(command) || !hex || hexlen < 65)
        return QB_EINVAL;
    if ((rc = qb_command_canonical(command, &text, &len, NULL, 0)) != QB_OK)
        return rc;
    rc = hmac_hex(key, key_len, text, len, hex);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The parser                                                                */

void qb_command_free(struct qb_command *cmd)
{
    if (!cmd)
        return;
    free(cmd->id);
    free(cmd->source);
    free(cmd->subject);
    free(cmd->bridge);
    free(cmd->reply_topic);
    free(cmd->type);
    json_decref(cmd->data);
    free(cmd->device);
    free(cmd->node_name);
    free(cmd->job);
    free(cmd);
}

/* Attributes a command may carry; anything else is refused (the signature covers them all). */
static const char *const known_attributes[] = {
    "specversion", "id",   "source",          "type",       "subject",    "time", "bridge",
    "signature",   "data", "datacontenttype", "dataschema", "replytopic",
};

/*
 * Copies a string attribute into *dst (owned by the command) when it is one, so
 * a rejection can still name it; other types are judged later. At most max
 * bytes are kept (cut on a UTF-8 boundary): whatever is read may be echoed in
 * a result or a log line, and its full length is judged from the JSON value.
 * Sets *nomem on allocation failure.
 */
static void read_string(json_t *obj, const char *key, size_t max, char **dst, bool *nomem)
{
    json_t *v = json_object_get(obj, key);
    const char *text = json_string_value(v);

    /* an embedded NUL ends the copy early; check_required_string refuses such values */
    if (text && !(*dst = strndup(text, qb_command_utf8_cut(text, max))))
        *nomem = true;
}

/* A string attribute that must be present and non-empty (max: byte limit, 0 = none). */
static int check_required_string(struct qb_command_error *err, json_t *obj, const char *key,
                                 size_t max)
{
    json_t *v = json_object_get(obj, key);

    if (!v)
        return reject(err, QB_CMD_ERR_INVALID, "%s: required attribute is missing", key);
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        memchr(json_string_value(v), '\0', json_string_length(v)))
        return reject(err, QB_CMD_ERR_INVALID, "%s: expected a non-empty string", key);
    if (max && json_string_length(v) > max)
        return reject(err, QB_CMD_ERR_INVALID, "%s: longer than %zu bytes", key, max);
    return QB_OK;
}

/* The CloudEvents attributes, in the documented order; fills cmd->time_sec. */
static int check_attributes(json_t *root, struct qb_command *cmd, struct qb_command_error *err)
{
    char quoted[QB_CMD_QUOTE_MAX + 4];
    const char *key;
    json_t *v;
    int rc;

    json_object_foreach(root, key, v)
    {
        bool known = false;

        for (size_t i = 0; i < sizeof(known_attributes) / sizeof(known_attributes[0]); i++)
            known = known || strcmp(key, known_attributes[i]) == 0;
        if (!known)
            return reject(err, QB_CMD_ERR_INVALID, "%s: unknown attribute", quote(quoted, key));
    }
    v = json_object_get(root, "specversion");
    if (!json_is_string(v) || strcmp(json_string_value(v), "1.0") != 0)
        return reject(err, QB_CMD_ERR_INVALID, "specversion: expected \"1.0\"");
    if ((rc = check_required_string(err, root, "id", QB_CMD_MAX_ID)) != QB_OK ||
        (rc = check_required_string(err, root, "source", QB_CMD_ECHO_MAX)) != QB_OK ||
        (rc = check_required_string(err, root, "type", 0)) != QB_OK)
        return rc;
    if (strncmp(cmd->type, QB_CMD_TYPE_PREFIX, strlen(QB_CMD_TYPE_PREFIX)) != 0)
        return reject(err, QB_CMD_ERR_INVALID, "type: expected qmp.command.<name>, got '%s'",
                      quote(quoted, cmd->type));
    if ((rc = check_required_string(err, root, "subject", 0)) != QB_OK)
        return rc;
    if (!valid_vm_name(cmd->subject))
        return reject(err, QB_CMD_ERR_INVALID,
                      "subject: expected a VM name (1 to 64 characters from [A-Za-z0-9._-])");
    if ((rc = check_required_string(err, root, "time", 0)) != QB_OK)
        return rc;
    if (!parse_rfc3339(json_string_value(json_object_get(root, "time")), &cmd->time_sec,
                       &cmd->time_usec))
        return reject(err, QB_CMD_ERR_INVALID, "time: expected an RFC 3339 date-time, got '%s'",
                      quote(quoted, json_string_value(json_object_get(root, "time"))));
    if ((v = json_object_get(root, "bridge")) && !json_is_string(v))
        return reject(err, QB_CMD_ERR_INVALID, "bridge: expected a string");
    if ((v = json_object_get(root, "signature")) && !json_is_string(v))
        return reject(err, QB_CMD_ERR_INVALID, "signature: expected a string");
    if ((v = json_object_get(root, "replytopic")) &&
        (!json_is_string(v) || json_string_length(v) == 0 ||
         json_string_length(v) > QB_CMD_REPLY_TOPIC_MAX ||
         memchr(json_string_value(v), '\0', json_string_length(v)) ||
         strpbrk(json_string_value(v), "+#")))
        return reject(err, QB_CMD_ERR_INVALID,
                      "replytopic: expected an MQTT topic name (1 to %d bytes, no '+' or '#')",
                      QB_CMD_REPLY_TOPIC_MAX);
    if ((v = json_object_get(root, "datacontenttype")) &&
        (!json_is_string(v) || strcmp(json_string_value(v), "application/json") != 0))
        return reject(err, QB_CMD_ERR_INVALID, "datacontenttype: expected \"application/json\"");
    if ((v = json_object_get(root, "dataschema")) && !json_is_string(v))
        return reject(err, QB_CMD_ERR_INVALID, "dataschema: expected a string");
    return QB_OK;
}

/* Known command, enabled, allowed, age: the policy checks before the signature. */
static int check_policy(const struct qb_command_policy *policy, int64_t now_sec,
                        struct qb_command *cmd, struct qb_command_error *err)
{
    char quoted[QB_CMD_QUOTE_MAX + 4];
    int64_t age;

    if (qb_cmd_name_parse(cmd->type + strlen(QB_CMD_TYPE_PREFIX), &cmd->name) != QB_OK)
        return reject(err, QB_CMD_ERR_UNKNOWN, "type: unknown command '%s'",
                      quote(quoted, cmd->type));
    cmd->name_known = true;
    if (!policy->enabled)
        return reject(err, QB_CMD_ERR_DISABLED, "commands are disabled on this bridge");
    if (!(policy->allow_mask & (1u << cmd->name)))
        return reject(err, QB_CMD_ERR_FORBIDDEN, "type: command '%s' is not in commands.allow",
                      commands[cmd->name].name);
    /* time_sec is bounded by the 4-digit year; now_sec is the caller's and may be anything */
    if (__builtin_sub_overflow(now_sec, cmd->time_sec, &age))
        age = now_sec < 0 ? INT64_MIN : INT64_MAX;
    if (age > 0 && (uint64_t)age > policy->max_age_ms / 1000)
        return reject(err, QB_CMD_ERR_EXPIRED, "time: older than max_age %us",
                      policy->max_age_ms / 1000);
    if (age < 0 && (age == INT64_MIN || (uint64_t)-age > policy->max_skew_ms / 1000))
        return reject(err, QB_CMD_ERR_EXPIRED, "time: more than max_skew %us in the future",
                      policy->max_skew_ms / 1000);
    return QB_OK;
}

static int check_signature(const struct qb_command_policy *policy, json_t *root,
                           struct qb_command_error *err)
{
    char expected[EVP_MAX_MD_SIZE * 2 + 1];
    char why[sizeof(err->message)];
    json_t *v = json_object_get(root, "signature");
    const char *sig;
    char *text;
    size_t len;
    int rc;

    if (!policy->hmac_key)
        return QB_OK; /* nothing to check against: an unsigned bridge ignores signatures */
    if (!v)
        return reject(err, QB_CMD_ERR_UNAUTHENTICATED,
                      "signature: required attribute is missing (commands are signed here)");
    sig = json_string_value(v);
    if (json_string_length(v) != 64 || strspn(sig, "0123456789abcdef") != 64)
        return reject(err, QB_CMD_ERR_UNAUTHENTICATED,
                      "signature: expected 64 lower-case hex digits");
    /*
     * The topic or Kafka key that brought the message to this bridge is not
     * signed: a signature that names no bridge could be replayed to another
     * bridge with the same key and a VM of the same name.
     */
    if (!json_object_get(root, "bridge"))
        return reject(err, QB_CMD_ERR_UNAUTHENTICATED,
                      "bridge: required attribute is missing (commands are signed here: the "
                      "signature must name the bridge it is for)");
    rc = qb_command_canonical(root, &text, &len, why, sizeof(why));
    if (rc == QB_EINVAL)
        return reject(err, QB_CMD_ERR_INVALID, "%s", why);
    if (rc != QB_OK)
        return rc;
    rc = hmac_hex(policy->hmac_key, policy->hmac_key_len, text, len, expected);
    free(text);
    if (rc != QB_OK)
        return rc;
    if (CRYPTO_memcmp(expected, sig, 64) != 0)
        return reject(err, QB_CMD_ERR_UNAUTHENTICATED, "signature: does not match");
    return QB_OK;
}

/* Converts one argument value into the struct; arg names the field in messages. */
static int apply_arg(const struct arg_spec *a, json_t *v, struct qb_command *cmd,
                     struct qb_command_error *err)
{
    char *dst = (char *)cmd + a->offset;

    switch (a->type) {
    case ARG_STRING: {
        char *copy;

        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > QB_CMD_MAX_STRING ||
            memchr(json_string_value(v), '\0', json_string_length(v)))
            return reject(err, QB_CMD_ERR_INVALID,
                          "data.%s: expected a non-empty string of at most %d bytes", a->name,
                          QB_CMD_MAX_STRING);
        if (!(copy = strdup(json_string_value(v))))
            return QB_ENOMEM;
        memcpy(dst, &copy, sizeof(copy));
        break;
    }
    case ARG_SIZE:
    case ARG_UINT: {
        json_int_t min = a->type == ARG_SIZE ? 1 : 0;
        uint64_t value;

        if (!json_is_integer(v) || json_integer_value(v) < min)
            return reject(err, QB_CMD_ERR_INVALID, "data.%s: expected an integer >= %lld", a->name,
                          (long long)min);
        value = (uint64_t)json_integer_value(v);
        memcpy(dst, &value, sizeof(value));
        break;
    }
    case ARG_BOOL: {
        bool b = json_is_true(v);

        if (!json_is_boolean(v))
            return reject(err, QB_CMD_ERR_INVALID, "data.%s: expected true or false", a->name);
        memcpy(dst, &b, sizeof(b));
        break;
    }
    }
    if (a->has_offset) {
        bool yes = true;

        memcpy((char *)cmd + a->has_offset, &yes, sizeof(yes));
    }
    return QB_OK;
}

/* Checks data against the command's argument table and fills the struct. */
static int check_arguments(json_t *root, struct qb_command *cmd, struct qb_command_error *err)
{
    const struct arg_spec *args = commands[cmd->name].args;
    char quoted[QB_CMD_QUOTE_MAX + 4];
    json_t *data = json_object_get(root, "data"), *v;
    const char *key;
    int rc;

    if (data && !json_is_object(data))
        return reject(err, QB_CMD_ERR_INVALID, "data: expected an object");
    if (data) {
        json_object_foreach(data, key, v)
        {
            bool known = false;

            for (const struct arg_spec *a = args; a->name && !known; a++)
                known = strcmp(a->name, key) == 0;
            if (!known)
                return reject(err, QB_CMD_ERR_INVALID, "data.%s: unknown argument",
                              quote(quoted, key));
        }
    }
    for (const struct arg_spec *a = args; a->name; a++) {
        v = data ? json_object_get(data, a->name) : NULL;
        if (!v && a->required)
            return reject(err, QB_CMD_ERR_INVALID, "data.%s: required argument is missing",
                          a->name);
        if (v && (rc = apply_arg(a, v, cmd, err)) != QB_OK)
            return rc;
    }
    /* exactly-one-of groups: report each group once, at its first member */
    for (const struct arg_spec *a = args; a->name; a++) {
        char names[128] = "";
        size_t present = 0, used = 0;
        bool first = true;

        if (!a->group)
            continue;
        for (const struct arg_spec *b = args; b < a && first; b++)
            first = b->group != a->group;
        if (!first)
            continue;
        for (const struct arg_spec *b = a; b->name; b++) {
            if (b->group != a->group)
                continue;
            present += data && json_object_get(data, b->name) ? 1 : 0;
            used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "",
                                     b->name);
        }
        if (present != 1)
            return reject(err, QB_CMD_ERR_INVALID, "data: exactly one of %s is required", names);
    }
    return QB_OK;
}

int qb_command_parse(const char *buf, size_t len, const struct qb_command_policy *policy,
                     int64_t now_sec, struct qb_command **out, struct qb_command_error *err)
{
    struct qb_command *cmd;
    json_error_t jerr;
    json_t *root = NULL;
    bool nomem = false;
    int rc;

    *out = NULL;
    if (err) {
        err->cls = QB_CMD_ERR_INVALID;
        err->message[0] = '\0';
    }
    if (!(cmd = calloc(1, sizeof(*cmd))))
        return QB_ENOMEM;
    if (len > policy->max_message_bytes) {
        rc = reject(err, QB_CMD_ERR_TOO_LARGE, "message: %zu bytes is over max_message_bytes %zu",
                    len, policy->max_message_bytes);
        goto done;
    }
    if (nesting_depth(buf, len, QB_CMD_MAX_DEPTH) > QB_CMD_MAX_DEPTH) {
        rc = reject(err, QB_CMD_ERR_INVALID, "message: JSON nested deeper than %d levels",
                    QB_CMD_MAX_DEPTH);
        goto done;
    }
    if (!(root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr))) {
        if (json_error_code(&jerr) == json_error_out_of_memory) {
            rc = QB_ENOMEM;
            goto done;
        }
        rc = reject(err, QB_CMD_ERR_INVALID, "message: invalid JSON at line %d column %d: %s",
                    jerr.line, jerr.column, jerr.text);
        goto done;
    }
    if (!json_is_object(root)) {
        rc = reject(err, QB_CMD_ERR_INVALID, "message: expected a JSON object");
        goto done;
    }
    /* Keep whatever names the command first, even if other attributes are wrong. */
    read_string(root, "id", QB_CMD_ID_MAX, &cmd->id, &nomem);
    read_string(root, "source", QB_CMD_ECHO_MAX, &cmd->source, &nomem);
    read_string(root, "subject", QB_CMD_ID_MAX, &cmd->subject, &nomem);
    read_string(root, "bridge", QB_CMD_ID_MAX, &cmd->bridge, &nomem);
    read_string(root, "replytopic", QB_CMD_REPLY_TOPIC_MAX, &cmd->reply_topic, &nomem);
    read_string(root, "type", QB_CMD_ID_MAX, &cmd->type, &nomem);
    if (nomem) {
        rc = QB_ENOMEM;
        goto done;
    }
    if ((cmd->data = json_object_get(root, "data")))
        json_incref(cmd->data);
    if ((rc = check_attributes(root, cmd, err)) != QB_OK ||
        (rc = check_policy(policy, now_sec, cmd, err)) != QB_OK ||
        (rc = check_signature(policy, root, err)) != QB_OK ||
        (rc = check_arguments(root, cmd, err)) != QB_OK)
        goto done;

done:
    json_decref(root);
    if (rc == QB_ENOMEM) {
        qb_command_free(cmd);
        return rc;
    }
    *out = cmd;
    return rc;
}

size_t qb_command_utf8_cut(const char *text, size_t max)
{
    size_t len = strnlen(text, max + 1);

    if (len <= max)
        return len;
    /* step back over continuation bytes (10xxxxxx) to the start of the cut sequence */
    len = max;
    while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
        len--;
    return len;
}

int qb_command_fingerprint(const struct qb_command *cmd, char *hex, size_t hexlen)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    json_t *obj;
    char *text;

    if (!cmd || !cmd->type || !cmd->subject || !hex || hexlen < 2 * SHA256_DIGEST_LENGTH + 1)
        return QB_EINVAL;
    /* "o" steals: a reference of our own to the data, or a new {} */
    obj = json_pack("{s:s, s:s, s:o}", "type", cmd->type, "subject", cmd->subject, "data",
                    cmd->data ? json_incref(cmd->data) : json_object());
    if (!obj)
        return QB_ENOMEM;
    text = json_dumps(obj, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(obj);
    if (!text)
        return QB_ENOMEM;
    SHA256((const unsigned char *)text, strlen(text), md);
    free(text);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return QB_OK;
}

json_t *qb_command_result_rejected(const struct qb_command *cmd, const struct qb_command_error *err)
{
    const char *name = cmd && cmd->name_known ? qb_cmd_name_str(cmd->name) : NULL;
    char message[sizeof(err->message)];
    json_t *result;

    /*
     * The message quotes what the sender sent (a topic level, a source cut to
     * fit): a cut in the middle of a UTF-8 sequence, or bytes that are none,
     * would make the whole result fail to build, and the sender get no answer.
     */
    qb_utf8_copy(message, sizeof(message), err ? err->message : "");

    result = json_pack(
        "{s:o, s:o, s:s, s:{s:s, s:s}, s:[]}", "command_id",
        cmd && cmd->id ? json_stringn(cmd->id, qb_command_utf8_cut(cmd->id, QB_CMD_ID_MAX))
                       : json_null(),
        "command", name ? json_string(name) : json_null(), "status", "rejected", "error", "class",
        err && err->cls ? err->cls : QB_CMD_ERR_INVALID, "message", message, "steps");
    return result;
}
