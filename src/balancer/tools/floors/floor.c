/* The least work a TCP relay can do, in C: `balancer bench`'s `cfloor` target.

   The same relay as floor.py, line for line in behaviour, without Python: one level-triggered
   epoll loop, round robin over backend ports on 127.0.0.1, 1 MiB reads into one buffer, each
   chunk sent straight to the other socket. What a socket does not take is kept, and its source
   is not read until that is sent. An EOF or error on either side closes both sides, each once
   its pending bytes are sent (no half-close). No configuration, health checks, retries,
   timeouts, limits, logs or metrics. Its figures in the harness bound what any relay can reach
   on the machine, whatever its language: the gap between it and the Python floor is Python's.

   The harness builds it with the machine's C compiler:  cc -O2 -o cfloor floor.c
   Usage:  cfloor PORT BACKEND_PORT [BACKEND_PORT ...]   (PORT 0: any free port) */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define HOST "127.0.0.1"
#define BUFFER_SIZE (1024 * 1024)
#define BATCH 256
#define MAX_FILES (1 << 20)

struct pair;

struct side {
    struct pair *pair;
    int fd;
    int open;      /* the socket is not closed yet */
    int reading;   /* watched for input */
    int closing;   /* close once `pending` is sent */
    char *pending; /* bytes the socket did not take yet (the other side is not read) */
    size_t sent, size;
};

struct pair {
    struct side sides[2];
};

static char buffer[BUFFER_SIZE];
static struct side **by_fd; /* the side each open descriptor serves */
static int epoll_fd;

static struct side *other(struct side *side) {
    struct side *sides = side->pair->sides;
    return side == &sides[0] ? &sides[1] : &sides[0];
}

static void watch(struct side *side) {
    struct epoll_event event = {
        .events = (side->reading ? EPOLLIN : 0) | (side->pending ? EPOLLOUT : 0),
        .data.fd = side->fd,
    };
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, side->fd, &event);
}

static void drop_pending(struct side *side) {
    free(side->pending);
    side->pending = NULL;
    side->sent = side->size = 0;
}

/* End the pair: each side is closed as soon as it has sent what it still has. */
static void close_pair(struct side *side) {
    struct pair *pair = side->pair;
    for (int i = 0; i < 2; i++) {
        struct side *s = &pair->sides[i];
        s->reading = 0;
        s->closing = 1;
        if (s->pending) {
            watch(s);
        } else if (s->open) {
            s->open = 0;
            by_fd[s->fd] = NULL;
            close(s->fd); /* (also out of the epoll set) */
        }
    }
    if (!pair->sides[0].open && !pair->sides[1].open)
        free(pair);
}

static void relay_read(struct side *side) {
    ssize_t size = recv(side->fd, buffer, sizeof buffer, 0);
    if (size < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (size <= 0) {
        close_pair(side);
        return;
    }
    struct side *to = other(side);
    ssize_t sent = send(to->fd, buffer, (size_t)size, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            close_pair(side);
            return;
        }
        sent = 0;
    }
    if (sent < size) {
        to->size = (size_t)(size - sent);
        to->pending = malloc(to->size);
        if (to->pending == NULL) {
            close_pair(side);
            return;
        }
        memcpy(to->pending, buffer + sent, to->size);
        to->sent = 0;
        side->reading = 0;
        watch(to);
        watch(side);
    }
}

static void flush(struct side *side) {
    ssize_t sent = send(side->fd, side->pending + side->sent, side->size - side->sent, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        drop_pending(side);
        close_pair(side);
        return;
    }
    side->sent += (size_t)sent;
    if (side->sent < side->size)
        return;
    drop_pending(side);
    if (side->closing) {
        close_pair(side);
        return;
    }
    other(side)->reading = 1;
    watch(side);
    watch(other(side));
}

static void serve(struct pair *pair, int i, int fd) {
    struct side *side = &pair->sides[i];
    side->pair = pair;
    side->fd = fd;
    side->open = side->reading = 1;
    by_fd[fd] = side;
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

static void accept_all(int listener, const struct sockaddr_in *backends, int count) {
    static int next;
    const int one = 1;
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (client < 0)
            return; /* EAGAIN, or an error that concerns that one connection attempt */
        int upstream = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (upstream < 0) {
            close(client);
            continue;
        }
        setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        const struct sockaddr_in *to = &backends[next];
        next = (next + 1) % count;
        /* (bytes sent before it is connected wait in `pending`) */
        if (connect(upstream, (const struct sockaddr *)to, sizeof *to) < 0 && errno != EINPROGRESS) {
            close(client);
            close(upstream);
            continue;
        }
        struct pair *pair = calloc(1, sizeof *pair);
        if (pair == NULL) {
            close(client);
            close(upstream);
            continue;
        }
        serve(pair, 0, client);
        serve(pair, 1, upstream);
    }
}

static int port_number(const char *text) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < 0 || value > 65535)
        return -1;
    return (int)value;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: cfloor PORT BACKEND_PORT [BACKEND_PORT ...]\n");
        return 2;
    }
    int count = argc - 2;
    struct sockaddr_in *backends = calloc((size_t)count, sizeof *backends);
    if (backends == NULL) {
        perror("cfloor");
        return 1;
    }
    int port = port_number(argv[1]);
    for (int i = 0; i < count && port >= 0; i++) {
        int p = port_number(argv[i + 2]);
        if (p <= 0)
            port = -1;
        backends[i].sin_family = AF_INET;
        backends[i].sin_port = htons((uint16_t)p);
        inet_pton(AF_INET, HOST, &backends[i].sin_addr);
    }
    if (port < 0) {
        fprintf(stderr, "usage: cfloor PORT BACKEND_PORT [BACKEND_PORT ...]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    if (limit.rlim_cur > MAX_FILES) { /* (no descriptor can then be past the table) */
        limit.rlim_cur = MAX_FILES;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    by_fd = calloc(limit.rlim_cur, sizeof *by_fd);
    if (by_fd == NULL) {
        perror("cfloor");
        return 1;
    }

    const int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(listener, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* (inherited) */
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, HOST, &address.sin_addr);
    socklen_t length = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 ||
        listen(listener, 4096) < 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) < 0) {
        perror("cfloor: listen");
        return 1;
    }
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
    printf("cfloor listening on %s:%d\n", HOST, ntohs(address.sin_port));
    fflush(stdout);

    struct epoll_event events[BATCH];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, BATCH, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            uint32_t what = events[i].events;
            if (fd == listener) {
                accept_all(listener, backends, count);
                continue;
            }
            struct side *side = by_fd[fd];
            if (side != NULL && (what & (EPOLLOUT | EPOLLERR)) && side->pending)
                flush(side);
            side = by_fd[fd];
            if (side != NULL && side->reading && (what & ~(uint32_t)EPOLLOUT))
                relay_read(side);
            else if (side != NULL && !side->pending && (what & (EPOLLHUP | EPOLLERR)))
                close_pair(side); /* (a paused side reset: epoll reports it whatever the mask) */
        }
    }
}
