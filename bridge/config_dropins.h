/*
 * config_dropins.h - where a configuration's drop-in files live, and which ones there are.
 *
 * Drop-ins are YAML files merged over the main file in name order (config.c does the
 * merging). They live in a directory beside the main file, named after it, so that two
 * bridges on one host (qmp-bridge@a and qmp-bridge@b, with /etc/qmp-bridge/a.yaml and
 * b.yaml) never read each other's drop-ins:
 *   qmp-bridge.yaml   -> conf.d/     (the packaged single-bridge layout)
 *   NAME.yaml, NAME.yml or NAME -> NAME.d/
 * A main file whose directory would be conf.d/ without being qmp-bridge.yaml (conf.yaml) is
 * refused: it would share qmp-bridge.yaml's drop-ins.
 * Only files named *.yaml that do not start with '.' are drop-ins; anything else in the
 * directory (editor backups, *.dpkg-old, README) is ignored.
 */
#ifndef QB_CONFIG_DROPINS_H
#define QB_CONFIG_DROPINS_H

#include <stddef.h>

/* At most this many drop-ins; each is held to the main file's size cap. */
#define QB_CONFIG_MAX_DROPINS 64

/*
 * The drop-in directory of the main file main_path, as a new string in *out (the caller
 * frees it). Returns QB_OK, QB_ENOMEM, or QB_ECONFIG (errbuf says why) for conf.yaml.
 */
int qb_config_dropin_dir(const char *main_path, char **out, char *errbuf, size_t errlen);

/*
 * Lists the drop-ins of dir, sorted by name (byte order), as new full paths in *paths (a new
 * array of *n new strings; free each and the array; NULL when *n is 0). A directory that
 * does not exist has no drop-ins. Returns QB_OK, QB_ENOMEM, or QB_ECONFIG with errbuf naming
 * the directory or file: dir is not a directory or cannot be read, an entry named *.yaml is
 * not a regular file, or there are more than QB_CONFIG_MAX_DROPINS.
 */
int qb_config_dropin_list(const char *dir, char ***paths, size_t *n, char *errbuf, size_t errlen);

/* Frees what qb_config_dropin_list returned. */
void qb_config_dropin_list_free(char **paths, size_t n);

#endif
