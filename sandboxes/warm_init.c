/* The warm interpreter's loop between programs, in C.

   `runner.py` in `warm` mode is pid 1 of the sandbox's inner namespaces and forks each program
   from its warm interpreter. Whatever the forking process writes between two forks costs it a
   page fault a page (the fork made every page copy-on-write): run in Python, the loop's
   bookkeeping (the request, the mounts, the pipes, the result) wrote about 240 pages a program,
   more than the program's own start. This loop writes a few: it is called once, from Python
   through ctypes, and returns in the parent only when the requests end, and in each forked
   child once the program's process is set up (uid, memory cgroup, capabilities, fds, rlimits,
   seccomp filter), with what the child needs to run the program in Python.

   What it does is what `runner.serve_warm` does (the Python loop, used where no C compiler
   is at hand); the docstrings there say why each step is as it is. The protocol:
   - a request: a 4-byte big-endian length, then `struct request` (little-endian), a `struct
     file_head` per file, a `struct step_head` per run, then the seccomp filter, each file's
     name and data, and each run's stdin (`runner.warm_request` builds it);
   - a result frame per run, as `runner.encode` makes them (a JSON header, stdout, stderr),
     each but the last answered by one byte: 1 go on, 0 stop; then {"kind": "end"}.

   No library does this (it is the fork server of one interpreter): written by hand. */

#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>
#include <sched.h>

#define WORK_DIR "/work"
#define CHUNK 65536
#define RUNNER_FDS 64      /* runner.py's _RUNNER_FDS: the runner holds no fd at or above */
#define NOFILE 256
#define OWN_PROCESSES 2
#define DRAIN_S 5.0
#define QUIET_S 0.005
#define REPORT_MAX 4096
#define MAX_REQUEST (1u << 31)

struct request {
    char magic[4]; /* "AWR1" */
    uint32_t nfiles, nsteps;
    int32_t source;  /* index of the program's file; -1: the program is on stdin */
    uint32_t seccomp_len;
} __attribute__((packed));

struct file_head {
    uint32_t name_len, data_len;
} __attribute__((packed));

struct step_head {
    double wall_s, cpu_s;
    uint64_t output_bytes;
    uint32_t file_mb, processes, address_space_mb, stdin_len;
} __attribute__((packed));

/* What a forked child returns to Python with, both set by Python before the loop. Through
   ctypes, in the child, the interpreter's after-fork hook and two reads of the program's name and
   text cost 0.3 ms and 100 page faults (ctypes' objects, each touched page a copy): the hook is
   called here, as `os.fork` calls it in C, and the file is put where Python reads it as bytes. */
struct assay_program {
    void (*after_fork)(void); /* the interpreter's PyOS_AfterFork_Child */
    /* A private anonymous mapping of Python's (nothing of it is touched before a child writes,
       so that forks copy none of it): the child puts there the name's and the text's sizes
       (each a uint64, the machine's byte order; NO_SIZE: no name, the program is on stdin; no
       text, it did not fit: read it from the work dir), then the name and the text. */
    char *area;
    uint64_t area_size;
};

#define NO_SIZE UINT64_MAX

static void put_program(struct assay_program *program, const struct request *q,
                        const struct file_head *files, const char *names) {
    uint64_t sizes[2] = {NO_SIZE, NO_SIZE};
    const char *p = names;
    for (int f = 0; f < (int)q->nfiles; f++) {
        if (f == q->source) {
            /* A name is at most 255 bytes (its file was made in the work dir) and the area is
               far larger (runner.py: `_AREA_BYTES`); a text that does not fit is read. */
            sizes[0] = files[f].name_len;
            if (sizeof sizes + sizes[0] > program->area_size) {
                dprintf(2, "the program's name does not fit its area\n");
                _exit(127);
            }
            memcpy(program->area + sizeof sizes, p, sizes[0]);
            if (sizeof sizes + sizes[0] + files[f].data_len <= program->area_size) {
                sizes[1] = files[f].data_len;
                memcpy(program->area + sizeof sizes + sizes[0], p + sizes[0], sizes[1]);
            }
        }
        p += files[f].name_len + files[f].data_len;
    }
    memcpy(program->area, sizes, sizeof sizes);
}

struct buf {
    char *data;
    size_t len, cap;
};

static int grow(struct buf *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int append(struct buf *b, const void *data, size_t n) {
    if (grow(b, n))
        return -1;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what) {
    fprintf(stderr, "warm init: %s: %s\n", what, strerror(errno));
    return -1;
}

static int read_exact(int fd, void *data, size_t n) {
    char *p = data;
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k == 0 ? 1 : -1; /* 1: the input ended */
        p += k;
        n -= k;
    }
    return 0;
}

/* `iov` written whole, in as few system calls as the pipe takes. */
static int writev_all(int fd, struct iovec *iov, int count) {
    while (count) {
        ssize_t k = writev(fd, iov, count);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        while (count && (size_t)k >= iov->iov_len) {
            k -= iov->iov_len;
            iov++;
            count--;
        }
        if (count) {
            iov->iov_base = (char *)iov->iov_base + k;
            iov->iov_len -= k;
        }
    }
    return 0;
}

static int write_all(int fd, const void *data, size_t n) {
    struct iovec iov = {(void *)data, n};
    return writev_all(fd, &iov, 1);
}

/* -- mounts: a fresh work dir, and /tmp and /dev/shm unless the last program left them as
   mounted (runner.py: `_fresh_warm_mounts`, `_untouched`) ------------------------------------ */

struct mounted {
    const char *target;
    int ours;
    char options[64];
    struct stat root;
    long flags; /* the root's inode flags (chattr's), as mounted */
};

/* The inode flags of `path` (FS_IOC_GETFLAGS); -1 where they cannot be read. */
static long inode_flags(const char *path) {
    long flags = -1;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        if (ioctl(fd, FS_IOC_GETFLAGS, &flags))
            flags = -1;
        close(fd);
    }
    return flags;
}

static struct mounted mounts[3] = {{.target = "/tmp"}, {.target = "/dev/shm"}, {.target = WORK_DIR}};

static int same_root(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_mode == b->st_mode &&
           a->st_uid == b->st_uid && a->st_gid == b->st_gid &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec &&
           a->st_atim.tv_sec == b->st_atim.tv_sec && a->st_atim.tv_nsec == b->st_atim.tv_nsec;
}

static int untouched(struct mounted *m, const char *options) {
    struct statvfs fs;
    struct stat st;
    if (!m->ours || strcmp(m->options, options) != 0)
        return 0;
    if (statvfs(m->target, &fs) || fs.f_files - fs.f_ffree != 1 || fs.f_blocks != fs.f_bfree)
        return 0;
    return stat(m->target, &st) == 0 && same_root(&st, &m->root) &&
           inode_flags(m->target) == m->flags;
}

/* The names of the files the last program was given in the work dir, each ending in 0. */
static struct buf work_files;
static uint32_t work_nfiles;

/* Whether the work dir's mount can be the next program's (runner.py: `_work_dir_emptied`):
   the last program's files unlinked by their names, nothing is left (no inode but the root,
   no block), and the root is the one mounted, with its mode, its inode flags and no xattr
   (ACLs are xattrs); its times are then set anew. Every process of the last program is gone:
   nothing holds a file of it open. */
static int work_dir_emptied(struct mounted *m, const char *options) {
    struct statvfs fs;
    struct stat st;
    char path[512];
    if (!m->ours || strcmp(m->options, options) != 0)
        return 0;
    if (chown(WORK_DIR, getuid(), getgid())) /* the last program's: its entries ours to unlink */
        return 0;
    const char *p = work_files.data;
    for (uint32_t i = 0; i < work_nfiles; i++) {
        snprintf(path, sizeof path, WORK_DIR "/%s", p);
        if (unlink(path))
            return 0;
        p += strlen(p) + 1;
    }
    if (statvfs(WORK_DIR, &fs) || fs.f_files - fs.f_ffree != 1 || fs.f_blocks != fs.f_bfree)
        return 0;
    if (stat(WORK_DIR, &st) || st.st_dev != m->root.st_dev || st.st_ino != m->root.st_ino ||
        st.st_mode != (S_IFDIR | 0755))
        return 0;
    if (listxattr(WORK_DIR, NULL, 0) != 0 || inode_flags(WORK_DIR) != m->flags)
        return 0;
    return utimensat(AT_FDCWD, WORK_DIR, NULL, 0) == 0; /* what it read or set: gone */
}

static int fresh_mounts(uint32_t file_mb) {
    unsigned long long size = 2ull * file_mb << 20;
    for (int i = 0; i < 3; i++) {
        struct mounted *m = &mounts[i];
        char options[64];
        if (i == 0)
            snprintf(options, sizeof options, "size=%llu,mode=1777", size);
        else if (i == 1)
            snprintf(options, sizeof options, "size=%llu,mode=1777", (unsigned long long)file_mb << 20);
        else
            snprintf(options, sizeof options, "size=%llu,mode=0755", size);
        if (i < 2 ? untouched(m, options) : work_dir_emptied(m, options))
            continue;
        if (m->ours && umount2(m->target, 0))
            return fail("umount");
        if (mount("tmpfs", m->target, "tmpfs", MS_NOSUID | MS_NODEV, options))
            return fail("mount");
        m->ours = 1;
        strcpy(m->options, options);
        if (stat(m->target, &m->root))
            return fail("stat");
        m->flags = inode_flags(m->target);
    }
    return 0;
}

/* The IPC namespace programs run in, kept from one program to the next while the last left
   nothing in it. System V IPC, the rest of what a namespace holds, the worker's seccomp filter
   refuses; POSIX message queues are the entries of the namespace's mqueue filesystem, which
   the init sees through a mount of its own that is attached nowhere (fsopen, fsmount: no
   program can reach it, and its fd is below RUNNER_FDS, closed in each program). Its root's
   size counts the queues, so a program that left one gets the next program a new namespace;
   one made and removed moves the root's times (by the coarse clock: within a tick of the
   last check it may not, and then nothing is left either). Where the kernel has no fsmount
   (before 5.2), every program gets a new one, as before. A new namespace costs the unshare
   and its teardown (an RCU grace period in a kernel worker): about 0.1 ms a program. */
#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif
#define ASSAY_FSOPEN_CLOEXEC 1
#define ASSAY_FSCONFIG_CMD_CREATE 6
#define ASSAY_FSMOUNT_CLOEXEC 1
#define ASSAY_MOUNT_ATTR_NOSUID 0x2
#define ASSAY_MOUNT_ATTR_NODEV 0x4
#define ASSAY_MOUNT_ATTR_NOEXEC 0x8

static struct ipc_view {
    int fd; /* the detached mqueue mount's root; -1: none (a new namespace for the next) */
    struct stat root;
} ipc = {.fd = -1};

static void ipc_view_open(struct ipc_view *v) {
    v->fd = -1;
    int fs = (int)syscall(SYS_fsopen, "mqueue", ASSAY_FSOPEN_CLOEXEC);
    if (fs < 0)
        return;
    int fd = -1;
    if (!syscall(SYS_fsconfig, fs, ASSAY_FSCONFIG_CMD_CREATE, NULL, NULL, 0))
        fd = (int)syscall(SYS_fsmount, fs, ASSAY_FSMOUNT_CLOEXEC,
                          ASSAY_MOUNT_ATTR_NOSUID | ASSAY_MOUNT_ATTR_NODEV | ASSAY_MOUNT_ATTR_NOEXEC);
    close(fs);
    if (fd >= 0 && (fd >= RUNNER_FDS || fstat(fd, &v->root))) {
        close(fd);
        fd = -1;
    }
    v->fd = fd;
}

static int ipc_untouched(const struct ipc_view *v) {
    struct stat now;
    return v->fd >= 0 && !fstat(v->fd, &now) && now.st_size == v->root.st_size &&
           now.st_nlink == v->root.st_nlink && same_root(&now, &v->root) &&
           now.st_mtim.tv_sec == v->root.st_mtim.tv_sec &&
           now.st_mtim.tv_nsec == v->root.st_mtim.tv_nsec;
}

/* The namespace the next program runs in: this one if the last program left it untouched,
   else a new one (with a view of its queues). */
static int fresh_ipc(struct ipc_view *v) {
    if (ipc_untouched(v))
        return 0;
    if (unshare(CLONE_NEWIPC))
        return fail("unshare");
    if (v->fd >= 0)
        close(v->fd);
    ipc_view_open(v);
    return 0;
}

static int write_files(uint32_t nfiles, const struct file_head *heads, const char *names,
                       int uid) {
    const char *p = names;
    char path[512];
    work_files.len = 0;
    work_nfiles = 0;
    for (uint32_t i = 0; i < nfiles; i++) {
        uint32_t n = heads[i].name_len;
        if (n == 0 || n > 255 || memchr(p, '/', n) || memchr(p, 0, n) ||
            (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) {
            errno = EINVAL;
            return fail("a file name");
        }
        snprintf(path, sizeof path, WORK_DIR "/%.*s", (int)n, p);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0)
            return fail("open");
        if (append(&work_files, p, n) || append(&work_files, "", 1)) {
            close(fd);
            return fail("a file name");
        }
        work_nfiles++;
        int bad = (uid >= 0 && fchown(fd, uid, uid)) || write_all(fd, p + n, heads[i].data_len);
        close(fd);
        if (bad)
            return fail("write");
        p += n + heads[i].data_len;
    }
    if (uid >= 0 && chown(WORK_DIR, uid, uid)) /* written: now the program's */
        return fail("chown");
    return 0;
}

/* -- the program's process, after the fork and before its code (runner.py:
   `run_warm_step`'s child, `_program`) --------------------------------------------------- */

static void setup_failed(int report, const char *what) {
    dprintf(report, "E the run's set-up failed: %s: %s\n", what, strerror(errno));
    _exit(127);
}

static void child(const struct step_head *s, int pipes[4][2], int uid, int cgroup,
                  const char *seccomp, uint32_t seccomp_len) {
    int report = pipes[3][1];
    if (cgroup >= 0 && write(cgroup, "0", 1) != 1) /* first: what it touches is charged there */
        setup_failed(report, "cgroup");
    if (uid >= 0) {
        if (setgroups(0, NULL) || setresgid(uid, uid, uid) || setresuid(uid, uid, uid))
            setup_failed(report, "uid");
    }
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) ||
        syscall(SYS_capset, &head, data))
        setup_failed(report, "capabilities");
    if (chdir(WORK_DIR))
        setup_failed(report, "chdir");
    if (dup2(pipes[0][0], 0) < 0 || dup2(pipes[1][1], 1) < 0 || dup2(pipes[2][1], 2) < 0)
        setup_failed(report, "dup2");
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)) /* init is not: /proc/self is the program's again */
        setup_failed(report, "prctl");
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "1000", 4) != 4) /* the memory killer takes it first */
        setup_failed(report, "oom_score_adj");
    close(fd);
    rlim_t cpu = (rlim_t)(s->cpu_s + 0.999);
    if (cpu < 1)
        cpu = 1; /* RLIMIT_CPU counts whole seconds */
    rlim_t memory = (rlim_t)s->address_space_mb << 20, size = (rlim_t)s->file_mb << 20;
    /* With a uid of its own, the program's process limit counts its processes alone. */
    rlim_t nproc = s->processes + (uid >= 0 ? 0 : OWN_PROCESSES);
    struct { int resource; rlim_t soft, hard; } limits[] = {
        {RLIMIT_CPU, cpu, cpu + 1}, {RLIMIT_AS, memory, memory}, {RLIMIT_FSIZE, size, size},
        {RLIMIT_NOFILE, NOFILE, NOFILE}, {RLIMIT_CORE, 0, 0}, {RLIMIT_NPROC, nproc, nproc},
    };
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        struct rlimit r = {limits[i].soft, limits[i].hard};
        if (setrlimit(limits[i].resource, &r))
            setup_failed(report, "setrlimit");
    }
    /* The no-fork filter, where the program shares its uid: with a uid of its own, its process
       limit (1, its processes alone) refuses it fork, clone and threads as the filter would
       (EAGAIN), and the second filter cost each program its attach (0.08 ms), its teardown and
       a run on each system call (through a service, the sandbox's CPU an item 2.24 against
       2.20 ms; 2.18 against 2.02 in a bare loop, where it was the only filter). The
       sandbox's own filter (sockets, io_uring, System V IPC, keyrings, other ABIs) is the init's
       and every program's either way. */
    if (s->processes == 1 && seccomp_len && uid < 0) { /* no_new_privs is the init's, inherited */
        struct sock_fprog prog = {(unsigned short)(seccomp_len / 8),
                                  (struct sock_filter *)seccomp};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0))
            setup_failed(report, "seccomp");
    }
    /* One system call where the kernel has it (5.9), else one a descriptor. */
    if (syscall(SYS_close_range, 3, RUNNER_FDS - 1, 0))
        for (int f = 3; f < RUNNER_FDS; f++)
            close(f);
}

/* -- the parent's side of a run (runner.py: `_pump`, `_result`) ------------------------------- */

static void end_the_rest(void) { kill(-1, SIGKILL); } /* every process of the namespace but init */

static void reap_all(void) {
    end_the_rest();
    for (;;) {
        if (waitpid(-1, NULL, 0) < 0 && errno != EINTR)
            return;
    }
}

struct run {
    struct buf out, err, report;
    int timed_out, exceeded, killed;
};

static void stop(struct run *r, pid_t pid) {
    if (!r->killed) {
        r->killed = 1;
        kill(pid, SIGKILL);
        end_the_rest();
    }
}

/* Write what the pipe takes now of stdin; 1 once it is all written or the reader is gone. */
static int feed(int fd, const char **data, size_t *left) {
    while (*left) {
        ssize_t k = write(fd, *data, *left > CHUNK ? CHUNK : *left);
        if (k < 0)
            return errno == EAGAIN ? 0 : 1; /* EPIPE: the program closed its stdin */
        *data += k;
        *left -= k;
    }
    return 1;
}

enum { FEED, OUT, ERR, REPORT, ENDED, NFDS };

static int pump(const struct step_head *s, const char *stdin_data, int pipes[4][2], int pidfd,
                pid_t pid, double started, struct run *r) {
    int fds[NFDS] = {pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0], pidfd};
    int live[NFDS] = {1, 1, 1, 1, 1};
    size_t left = s->stdin_len;
    fcntl(fds[FEED], F_SETFL, O_NONBLOCK);
    if (feed(fds[FEED], &stdin_data, &left)) { /* a small stdin fits the pipe at once */
        close(fds[FEED]);
        live[FEED] = 0;
    }
    double deadline = started + s->wall_s;
    if (!live[FEED]) { /* most programs end within a few ms, having written less than a pipe */
        double wait = deadline - now();
        if (wait > QUIET_S)
            wait = QUIET_S;
        struct pollfd p = {pidfd, POLLIN, 0};
        if (wait > 0 && poll(&p, 1, (int)(wait * 1000) + 1) > 0) {
            live[ENDED] = 0;
            end_the_rest(); /* it ended: nothing it started outlives it */
        }
    }
    for (;;) {
        struct pollfd p[NFDS];
        int which[NFDS], n = 0;
        for (int i = 0; i < NFDS; i++) {
            if (live[i]) {
                p[n] = (struct pollfd){fds[i], i == FEED ? POLLOUT : POLLIN, 0};
                which[n++] = i;
            }
        }
        if (!n)
            break;
        double wait = deadline - now();
        if (wait <= 0) {
            if (r->killed)
                break; /* pipes still open well after the kill: give up on them */
            r->timed_out = 1;
            stop(r, pid);
            deadline = now() + DRAIN_S;
            continue;
        }
        int got = poll(p, n, (int)(wait * 1000) + 1);
        if (got < 0 && errno != EINTR)
            return fail("poll");
        for (int j = 0; got > 0 && j < n; j++) {
            int i = which[j];
            if (!p[j].revents || !live[i])
                continue;
            if (i == ENDED) {
                live[i] = 0;
                end_the_rest();
                continue;
            }
            if (i == FEED) {
                if (feed(fds[i], &stdin_data, &left)) {
                    close(fds[i]);
                    live[i] = 0;
                }
                continue;
            }
            struct buf *b = i == OUT ? &r->out : i == ERR ? &r->err : &r->report;
            if (grow(b, CHUNK)) {
                errno = ENOMEM;
                return fail("output");
            }
            ssize_t k = read(fds[i], b->data + b->len, CHUNK);
            if (k < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (k <= 0) {
                close(fds[i]);
                live[i] = 0;
                continue;
            }
            if (i == REPORT) {
                if (b->len + k <= REPORT_MAX)
                    b->len += k;
                continue;
            }
            size_t room = s->output_bytes > b->len ? s->output_bytes - b->len : 0;
            if ((size_t)k > room) {
                b->len += room;
                r->exceeded = 1;
                stop(r, pid);
            } else {
                b->len += k;
            }
        }
    }
    for (int i = 0; i < ENDED; i++)
        if (live[i])
            close(fds[i]);
    return 0;
}

/* JSON's escapes for the runner's error line (bytes past ASCII are replaced). */
static void json_string(struct buf *b, const char *s, size_t n) {
    char esc[8];
    append(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = c;
            append(b, esc, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            append(b, esc, snprintf(esc, sizeof esc, "\\u%04x", c < 0x7f ? c : 0xfffd));
        } else {
            append(b, &c, 1);
        }
    }
    append(b, "\"", 1);
}

#define END_HEADER "{\"kind\": \"end\", \"blobs\": []}"
_Static_assert(sizeof END_HEADER - 1 == 0x1c, "the end frame's length, below");
static const char END_FRAME[] = "\0\0\0\x1c" END_HEADER; /* big-endian length, header */

/* A run's result frame; with the end frame after it when it is the request's last (one write,
   so the service reads both with one wake-up). */
static int send_result(int ctl_out, const struct step_head *s, struct run *r, int status,
                       const struct rusage *usage, double elapsed, int last) {
    struct buf h = {0};
    char num[512];
    double cpu = usage->ru_utime.tv_sec + usage->ru_utime.tv_usec / 1e6 +
                 usage->ru_stime.tv_sec + usage->ru_stime.tv_usec / 1e6;
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    char exit_code[16] = "null", signal_no[16] = "null";
    if (sig)
        snprintf(signal_no, sizeof signal_no, "%d", sig);
    else
        snprintf(exit_code, sizeof exit_code, "%d", WEXITSTATUS(status));
    double cpu_rlimit = (int)(s->cpu_s + 0.999) < 1 ? 1 : (int)(s->cpu_s + 0.999);
    int over_cpu = sig == SIGXCPU || (sig == SIGKILL && cpu >= cpu_rlimit);
    int cpu_timed_out = over_cpu || (cpu > s->cpu_s && !r->timed_out);
    append(&h, "    ", 4); /* the frame's length, filled in below */
    append(&h, num,
           snprintf(num, sizeof num,
                    "{\"exit\": %s, \"signal\": %s, \"wall_s\": %.9g, \"cpu_s\": %.9g, "
                    "\"memory_kb\": %ld, \"timed_out\": %s, \"cpu_timed_out\": %s, "
                    "\"output_exceeded\": %s, \"file_exceeded\": %s, \"kind\": \"run\"",
                    exit_code, signal_no, elapsed, cpu, usage->ru_maxrss,
                    r->timed_out ? "true" : "false", cpu_timed_out ? "true" : "false",
                    r->exceeded ? "true" : "false", sig == SIGXFSZ ? "true" : "false"));
    for (size_t i = 0; i + 1 < r->report.len; i++) { /* the first "E " line: a set-up failure */
        if ((i == 0 || r->report.data[i - 1] == '\n') && r->report.data[i] == 'E' &&
            r->report.data[i + 1] == ' ') {
            const char *line = r->report.data + i + 2;
            const char *end = memchr(line, '\n', r->report.data + r->report.len - line);
            append(&h, ", \"error\": ", 11);
            json_string(&h, line, (end ? end : r->report.data + r->report.len) - line);
            break;
        }
    }
    append(&h, num, snprintf(num, sizeof num, ", \"blobs\": [%zu, %zu]}", r->out.len, r->err.len));
    if (!h.data)
        return fail("result");
    uint32_t size = htobe32((uint32_t)(h.len - 4));
    memcpy(h.data, &size, 4);
    struct iovec iov[4] = {{h.data, h.len}, {r->out.data, r->out.len}, {r->err.data, r->err.len},
                           {(void *)END_FRAME, last ? sizeof END_FRAME - 1 : 0}};
    int bad = writev_all(ctl_out, iov, 4);
    free(h.data);
    return bad ? fail("write") : 0;
}


static int send_end(int ctl_out) {
    return write_all(ctl_out, END_FRAME, sizeof END_FRAME - 1) ? fail("write") : 0;
}

/* One run: fresh mounts and IPC namespace, the fork, the pump, the result. Returns 1 in the
   child, 0 in the parent once the result is sent, -1 on a failure of the loop itself. */
static int run_one(int ctl_out, const struct step_head *s, const char *stdin_data,
                   const struct request *q, const struct file_head *files, const char *names,
                   const char *seccomp, int uid, int cgroup, int last) {
    if (fresh_mounts(s->file_mb) || write_files(q->nfiles, files, names, uid))
        return -1;
    /* An IPC namespace no program before it left anything in, which the program inherits:
       made here, before the fork, when the last one did. */
    if (fresh_ipc(&ipc))
        return -1;
    int pipes[4][2];
    for (int i = 0; i < 4; i++)
        if (pipe2(pipes[i], O_CLOEXEC))
            return fail("pipe");
    double started = now();
    pid_t pid = fork();
    if (pid < 0)
        return fail("fork");
    if (pid == 0) {
        child(s, pipes, uid, cgroup, seccomp, q->seccomp_len);
        return 1;
    }
    close(pipes[0][0]);
    close(pipes[1][1]);
    close(pipes[2][1]);
    close(pipes[3][1]);
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return fail("pidfd_open");
    struct run r = {0};
    int bad = pump(s, stdin_data, pipes, pidfd, pid, started, &r);
    close(pidfd);
    int status = 0;
    struct rusage usage;
    while (!bad && wait4(pid, &status, 0, &usage) < 0) {
        if (errno != EINTR)
            bad = fail("wait4");
    }
    reap_all();
    if (!bad)
        bad = send_result(ctl_out, s, &r, status, &usage, now() - started, last);
    free(r.out.data);
    free(r.err.data);
    free(r.report.data);
    return bad;
}

/* Serve requests until `ctl_in` ends. `uid_first`, `uid_count`: the uids programs take in
   turn (count 0: this process's). `cgroup`: an fd of the programs' cgroup.procs, or -1.
   Returns 0 when the input ends, -1 on a failure (said on stderr), 1 in a program's child with
   `program` filled in. */
int assay_warm_serve(int ctl_in, int ctl_out, int uid_first, int uid_count, int cgroup,
                     struct assay_program *program) {
    unsigned long turn = 0;
    for (;;) {
        uint32_t size;
        int got = read_exact(ctl_in, &size, 4);
        if (got)
            return got > 0 ? 0 : fail("read");
        size = be32toh(size);
        if (size < sizeof(struct request) || size > MAX_REQUEST) {
            errno = EPROTO;
            return fail("a request's size");
        }
        char *body = malloc(size);
        if (!body)
            return fail("malloc");
        if ((got = read_exact(ctl_in, body, size))) {
            free(body);
            return got > 0 ? 0 : fail("read");
        }
        const struct request *q = (const struct request *)body;
        uint64_t need = sizeof *q + (uint64_t)q->nfiles * sizeof(struct file_head) +
                        (uint64_t)q->nsteps * sizeof(struct step_head);
        if (memcmp(q->magic, "AWR1", 4) || need > size || q->seccomp_len % 8 ||
            (q->source >= 0 && (uint32_t)q->source >= q->nfiles)) {
            free(body);
            errno = EPROTO;
            return fail("a request");
        }
        const struct file_head *files = (const struct file_head *)(body + sizeof *q);
        const struct step_head *steps = (const struct step_head *)(files + q->nfiles);
        need += q->seccomp_len;
        for (uint32_t i = 0; i < q->nfiles; i++)
            need += (uint64_t)files[i].name_len + files[i].data_len;
        for (uint32_t i = 0; i < q->nsteps; i++)
            need += steps[i].stdin_len;
        if (need != size) {
            free(body);
            errno = EPROTO;
            return fail("a request's sizes");
        }
        const char *seccomp = (const char *)(steps + q->nsteps);
        const char *names = seccomp + q->seccomp_len, *stdin_data = names;
        for (uint32_t i = 0; i < q->nfiles; i++)
            stdin_data += files[i].name_len + files[i].data_len;
        int result = 0;
        if (q->nsteps == 0)
            result = send_end(ctl_out);
        for (uint32_t i = 0; !result && i < q->nsteps; i++) {
            int uid = uid_count > 0 ? uid_first + (int)(turn++ % uid_count) : -1;
            int last = i + 1 == q->nsteps; /* its result frame carries the end frame */
            result = run_one(ctl_out, &steps[i], stdin_data, q, files, names, seccomp, uid, cgroup,
                             last);
            if (result == 1) { /* the program's process: back to Python with its file */
                if (program->after_fork)
                    program->after_fork(); /* the interpreter's locks, its at-fork hooks */
                put_program(program, q, files, names);
                return 1;
            }
            stdin_data += steps[i].stdin_len;
            if (result)
                break;
            if (last)
                break;
            unsigned char go;
            if ((got = read_exact(ctl_in, &go, 1))) { /* the service says whether to go on */
                explicit_bzero(body, size);
                free(body);
                return got > 0 ? 0 : fail("read");
            }
            if (!go) {
                result = send_end(ctl_out);
                break;
            }
        }
        explicit_bzero(body, size); /* no copy of this program's code or input stays */
        free(body);
        if (result)
            return -1;
    }
}
