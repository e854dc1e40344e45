/*
 * mqtt_topic.c - placing inbound command topics (see mqtt_topic.h): pure
 * string work, no broker and no loop, so the unit tests cover every shape.
 */
#include "mqtt_topic.h"

#include <stdlib.h>
#include <string.h>

#define COMMAND_LEVEL "/command"

/* Does topic start with head, where a '.' of head may stand as '/' in topic? */
static size_t head_length(const char *head, const char *topic, bool dots_are_levels)
{
    size_t i;

    for (i = 0; head[i]; i++) {
        bool same = topic[i] == head[i] || (dots_are_levels && head[i] == '.' && topic[i] == '/');

        if (!same)
            return 0;
    }
    return i;
}

char *qb_mqtt_topic_command_vm(const char *head, const char *topic, bool dots_are_levels, bool *oom)
{
    size_t n = head_length(head, topic, dots_are_levels);
    size_t suffix = strlen(COMMAND_LEVEL);
    const char *vm = topic + n;
    size_t len = strlen(vm);
    char *name;

    *oom = false;
    if (n == 0 || len <= suffix || strcmp(vm + len - suffix, COMMAND_LEVEL) != 0)
        return NULL;
    len -= suffix;
    /* a '/' in the VM part is a level the broker made of a '.'; elsewhere it is no VM */
    if (!dots_are_levels && memchr(vm, '/', len))
        return NULL;
    name = strndup(vm, len);
    if (!name) {
        *oom = true;
        return NULL;
    }
    for (char *p = name; *p; p++)
        if (*p == '/')
            *p = '.';
    return name;
}

size_t qb_mqtt_topic_levels(const char *name)
{
    size_t levels = 1;

    for (; *name; name++)
        levels += *name == '.';
    return levels;
}

char *qb_mqtt_topic_command_filter(const char *head, size_t levels)
{
    size_t n = strlen(head);
    char *filter;

    if (levels < 1 || levels > QB_MQTT_TOPIC_LEVELS_MAX)
        return NULL;
    filter = malloc(n + 2 * levels + strlen("command") + 1);
    if (!filter)
        return NULL;
    memcpy(filter, head, n);
    for (size_t i = 0; i < levels; i++) {
        filter[n++] = '+';
        filter[n++] = '/';
    }
    strcpy(filter + n, "command");
    return filter;
}
