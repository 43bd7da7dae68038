/*
 * A minimal stand-in for NVIDIA's cuda-checkpoint, used by bench/gpu/proof.sh ONLY when the device
 * machine has no cuda-checkpoint of its own. It drives the driver's public checkpoint API
 * (cuCheckpointProcess{Lock,Checkpoint,Restore,Unlock,GetState,GetRestoreThreadId}, CUDA 12.8+ /
 * driver >= 570; the restore arguments below are the CUDA 13 layout, driver >= 580) through
 * libcuda.so.1, loaded at run time, so it builds with a plain C compiler and no CUDA headers:
 *
 *   cc -O2 -o cuda-checkpoint bench/gpu/cuda_checkpoint_min.c -ldl
 *
 * It accepts what cedana passes: --help, --get-state --pid P, --action lock|checkpoint|restore|unlock
 * --pid P [--timeout MS], --toggle --pid P, --get-restore-tid --pid P. No --device-map (restores
 * onto the same GPUs only; its --help does not offer it, so cedana refuses a remap).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
enum { ST_RUNNING = 0, ST_LOCKED = 1, ST_CHECKPOINTED = 2, ST_FAILED = 3 };
/* Each argument structure is 64 bytes; every field but the lock timeout stays zero here. */
struct lock_args { unsigned int timeout_ms; unsigned int reserved0; unsigned long long reserved1[7]; };
struct zero_args { unsigned long long reserved[8]; };

static CUresult (*p_init)(unsigned int);
static CUresult (*p_err_name)(CUresult, const char **);
static CUresult (*p_err_string)(CUresult, const char **);
static CUresult (*p_lock)(int, struct lock_args *);
static CUresult (*p_checkpoint)(int, struct zero_args *);
static CUresult (*p_restore)(int, struct zero_args *);
static CUresult (*p_unlock)(int, struct zero_args *);
static CUresult (*p_get_state)(int, int *);
static CUresult (*p_restore_tid)(int, int *);

static const char *const state_names[] = { "running", "locked", "checkpointed", "failed" };

static void usage(FILE *f)
{
	fprintf(f, "cuda-checkpoint (minimal stand-in built from cedana's bench/gpu/cuda_checkpoint_min.c)\n"
		   "Usage: cuda-checkpoint --get-state --pid <pid>\n"
		   "       cuda-checkpoint --action <lock|checkpoint|restore|unlock> --pid <pid> [--timeout <ms>]\n"
		   "         --timeout <ms>   lock: give up after <ms> milliseconds\n"
		   "       cuda-checkpoint --toggle --pid <pid>\n"
		   "       cuda-checkpoint --get-restore-tid --pid <pid>\n");
}

static int fail(const char *what, int pid, CUresult r)
{
	const char *name = "?", *text = "";
	if (p_err_name)
		p_err_name(r, &name);
	if (p_err_string)
		p_err_string(r, &text);
	fprintf(stderr, "%s(pid %d) failed: %s (%d): %s\n", what, pid, name ? name : "?", r, text ? text : "");
	return 1;
}

static void *sym(void *h, const char *name)
{
	void *s = dlsym(h, name);
	if (!s) {
		fprintf(stderr, "libcuda.so.1 has no %s (driver too old for the checkpoint API?)\n", name);
		exit(1);
	}
	return s;
}

static int do_action(const char *action, int pid, unsigned int timeout_ms)
{
	struct zero_args z;
	CUresult r;
	memset(&z, 0, sizeof(z));
	if (!strcmp(action, "lock")) {
		struct lock_args a;
		memset(&a, 0, sizeof(a));
		a.timeout_ms = timeout_ms;
		r = p_lock(pid, &a);
		return r ? fail("cuCheckpointProcessLock", pid, r) : 0;
	}
	if (!strcmp(action, "checkpoint"))
		return (r = p_checkpoint(pid, &z)) ? fail("cuCheckpointProcessCheckpoint", pid, r) : 0;
	if (!strcmp(action, "restore"))
		return (r = p_restore(pid, &z)) ? fail("cuCheckpointProcessRestore", pid, r) : 0;
	if (!strcmp(action, "unlock"))
		return (r = p_unlock(pid, &z)) ? fail("cuCheckpointProcessUnlock", pid, r) : 0;
	fprintf(stderr, "unknown --action %s\n", action);
	return 2;
}

int main(int argc, char **argv)
{
	const char *action = NULL;
	int pid = -1, get_state = 0, toggle = 0, get_tid = 0;
	unsigned int timeout_ms = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--get-state")) {
			get_state = 1;
		} else if (!strcmp(a, "--toggle")) {
			toggle = 1;
		} else if (!strcmp(a, "--get-restore-tid")) {
			get_tid = 1;
		} else if (!strcmp(a, "--pid") && v) {
			pid = atoi(v), i++;
		} else if (!strcmp(a, "--action") && v) {
			action = v, i++;
		} else if (!strcmp(a, "--timeout") && v) {
			timeout_ms = (unsigned int)strtoul(v, NULL, 10), i++;
		} else {
			fprintf(stderr, "unknown or incomplete argument: %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (pid <= 0 || get_state + toggle + get_tid + (action != NULL) != 1) {
		usage(stderr);
		return 2;
	}

	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "cannot load libcuda.so.1: %s\n", dlerror());
		return 1;
	}
	p_init = sym(h, "cuInit");
	p_err_name = dlsym(h, "cuGetErrorName");
	p_err_string = dlsym(h, "cuGetErrorString");
	p_lock = sym(h, "cuCheckpointProcessLock");
	p_checkpoint = sym(h, "cuCheckpointProcessCheckpoint");
	p_restore = sym(h, "cuCheckpointProcessRestore");
	p_unlock = sym(h, "cuCheckpointProcessUnlock");
	p_get_state = sym(h, "cuCheckpointProcessGetState");
	p_restore_tid = sym(h, "cuCheckpointProcessGetRestoreThreadId");
	/* The restore needs the driver initialized in the calling process (no context is made). */
	CUresult r = p_init(0);
	if (r)
		return fail("cuInit", 0, r);

	if (get_tid) {
		int tid = 0;
		if ((r = p_restore_tid(pid, &tid)))
			return fail("cuCheckpointProcessGetRestoreThreadId", pid, r);
		printf("%d\n", tid);
		return 0;
	}
	int st = -1;
	if (get_state || toggle) {
		if ((r = p_get_state(pid, &st)))
			return fail("cuCheckpointProcessGetState", pid, r);
		if (st < ST_RUNNING || st > ST_FAILED) {
			fprintf(stderr, "unknown CUDA process state %d\n", st);
			return 1;
		}
	}
	if (get_state) {
		printf("%s\n", state_names[st]);
		return 0;
	}
	if (toggle) {
		if (st == ST_RUNNING)
			return do_action("lock", pid, 0) || do_action("checkpoint", pid, 0);
		if (st == ST_CHECKPOINTED)
			return do_action("restore", pid, 0) || do_action("unlock", pid, 0);
		fprintf(stderr, "--toggle: process %d is %s\n", pid, state_names[st]);
		return 1;
	}
	return do_action(action, pid, timeout_ms);
}
