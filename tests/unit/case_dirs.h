/*
 * case_dirs.h - data-driven unit tests: one folder per case under a root
 * (tests/unit/data/normalize, tests/unit/data/command_exec), in name order.
 */
#ifndef QB_TEST_CASE_DIRS_H
#define QB_TEST_CASE_DIRS_H

/*
 * Calls fn(dir, arg) for every folder under root whose name does not start
 * with '.', in name order (dir borrowed for the call). Fails the test when
 * root cannot be read. Returns how many folders there were.
 */
int qb_test_foreach_case_dir(const char *root, void (*fn)(const char *dir, void *arg), void *arg);

/* Runs run(dir) for every case folder under root, printing each case's name; returns the count. */
int qb_test_run_case_dirs(const char *root, void (*run)(const char *dir));

#endif
