"""CPU seconds of a process tree from /proc (Linux): the benchmarks' CPU accounting (JVM, Python workers, servers)."""
import os


def _stat(path: str) -> tuple[str, list[str]] | None:
    "(comm, the fields after it) of a /proc stat file (a process's or a thread's); None when it is gone."
    try: st = open(path).read()
    except OSError: return None
    return st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()


def tree_processes(root: int | None = None) -> dict | None:
    """{pid: (name, own CPU seconds, CPU seconds of its reaped children, start time in clock ticks after boot)} of
    `root` (default this process) and its descendants; None without /proc."""
    if not os.path.isdir("/proc"): return None
    procs = {}
    for p in os.listdir("/proc"):
        if not p.isdigit(): continue
        r = _stat(f"/proc/{p}/stat")
        if r is None: continue
        comm, f = r
        procs[int(p)] = (int(f[1]), comm,  # ppid, comm
                         int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), int(f[19]))  # utime + stime, cutime + cstime, starttime
    kids = {}
    for p, v in procs.items(): kids.setdefault(v[0], []).append(p)
    hz = os.sysconf("SC_CLK_TCK")
    out, todo = {}, [root or os.getpid()]
    while todo:
        x = todo.pop()
        if x in procs: out[x] = (procs[x][1], procs[x][2] / hz, procs[x][3] / hz, procs[x][4])
        todo += kids.get(x, [])
    return out


def tree_cpu_seconds(root: int | None = None):
    "User + system CPU seconds of `root` (default this process) and its descendants, reaped children included; None without /proc."
    t = tree_processes(root)
    return None if t is None else sum(own + reaped for _, own, reaped, _ in t.values())


class CpuLedger:
    """CPU seconds a process tree has used since it was created, by kind (`jvm`: processes named java; `python`: all
    the others), that never goes back: a process that ends keeps the CPU last read for it (a Python worker that
    exits is not always reaped by a process of the tree, so its parent's children times cannot be relied on)."""
    def __init__(self, root: int | None = None):
        self.root, self.last = root, {}
    def read(self) -> dict | None:
        t = tree_processes(self.root)
        if t is None: return None
        for pid, (name, own, _, start) in t.items():  # (pid, start time): a reused pid is another process
            self.last[pid, start] = ("jvm" if name == "java" else "python", own)
        out = {"jvm": 0.0, "python": 0.0}
        for kind, own in self.last.values(): out[kind] += own
        return out


JVM_THREAD_GROUPS = (("JIT compiler", ("C1 CompilerThre", "C2 CompilerThre")), ("GC", ("GC Thread", "G1 ")),
                     ("Spark tasks", ("Executor task",)))


class JvmThreadLedger:
    """CPU seconds of the JVMs of a process tree by thread group (`JVM_THREAD_GROUPS`, the rest as `other`), kept per
    thread so that a thread that ends (an idle Spark task thread does) keeps the CPU last read for it."""
    def __init__(self, root: int | None = None):
        self.root, self.last = root, {}
    def read(self) -> dict | None:
        t = tree_processes(self.root)
        if t is None: return None
        hz = os.sysconf("SC_CLK_TCK")
        for pid, (name, _, _, start) in t.items():
            if name != "java": continue
            try: tids = os.listdir(f"/proc/{pid}/task")
            except OSError: continue
            for tid in tids:
                r = _stat(f"/proc/{pid}/task/{tid}/stat")
                if r is None: continue
                comm, f = r
                self.last[pid, start, tid, int(f[19])] = (comm, (int(f[11]) + int(f[12])) / hz)  # starttime; utime + stime
        out = {g: 0.0 for g, _ in JVM_THREAD_GROUPS} | {"other": 0.0}
        for name, cpu in self.last.values():
            out[next((g for g, prefixes in JVM_THREAD_GROUPS if name.startswith(prefixes)), "other")] += cpu
        return out
