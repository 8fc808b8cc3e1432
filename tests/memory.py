"""Peak memory of a child process, for tests that measure it.

`HWM` is Python source defining `_hwm()`: the process's peak resident set in MB from /proc/self/status
(VmHWM). Not `resource.getrusage(...).ru_maxrss`: Linux carries that across exec from the forked parent,
so a child of a big pytest process would report the parent's peak.
"""

HWM = '''
def _hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
'''
