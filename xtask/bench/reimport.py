#!/usr/bin/env python3
"""Re-import of a legacy global event log that grew after its import.

An older Prodigy appends to `.prodigy/mapreduce/events/global/events.jsonl`
while `migrate` runs (after it verified the log: the log stays in the
project, grown), then appends 1,000 more lines. Times the second `migrate`
(which imports only what follows the version already imported) against a
first import of the same grown log in a fresh project, median of 5, at
20,000 and 200,000 lines. Needs the test hooks (to pause the first run):

    cargo build --release -p storage-cli --features test-hooks
    python3 xtask/bench/reimport.py
"""
import os, subprocess, time, shutil, statistics, json
BIN=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/release/prodigy-storage")
BASE=os.environ.get("BENCH_DIR", "/tmp/prodigy-reimport-bench")
JOB="mapreduce-1757146800123"
def line(i, tag="e"):
    return '{"id":"%s%d","timestamp":"2025-09-06T08:31:02Z","event":{"event_type":"agent_completed","job_id":"%s","pad":"%s"}}\n' % (tag, i, JOB, "x"*40)
def run(args, home, cwd, env=None):
    e=dict(os.environ); e.update(env or {})
    return subprocess.Popen([BIN,"--home",home]+args, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
def setup(base, n):
    shutil.rmtree(base, ignore_errors=True)
    proj=os.path.join(base,"api"); home=os.path.join(base,"home")
    d=os.path.join(proj,".prodigy/mapreduce/events/global"); os.makedirs(d)
    subprocess.run(["git","init","-q",proj])
    with open(os.path.join(d,"events.jsonl"),"w") as f:
        for i in range(n): f.write(line(i))
    return proj, home, os.path.join(d,"events.jsonl")
def grown(base, n, suffix):
    proj, home, log = setup(base, n)
    pause=os.path.join(base,"pause")
    p=run(["migrate","--json"], home, proj, {"PRODIGY_STORAGE_PAUSE_AT":"after-publish","PRODIGY_STORAGE_PAUSE_FILE":pause})
    while not os.path.exists(pause): time.sleep(0.005)
    with open(log,"a") as f: f.write(line(0,"late"))
    os.remove(pause); p.communicate()
    with open(log,"a") as f:
        for i in range(suffix): f.write(line(i,"s"))
    subprocess.run(["sync"])
    t=time.perf_counter(); q=run(["migrate","--json"], home, proj); out,err=q.communicate(); dt=time.perf_counter()-t
    assert q.returncode==0, err
    assert b"only what follows" in out, out[:500]
    return dt
def whole(base, n, suffix):
    proj, home, log = setup(base, n+1+suffix)
    subprocess.run(["sync"])
    t=time.perf_counter(); q=run(["migrate","--json"], home, proj); q.communicate(); return time.perf_counter()-t
res={}
for scale in (1,10):
    n=20000*scale
    g=[grown(os.path.join(BASE,"g"),n,1000) for _ in range(5)]
    w=[whole(os.path.join(BASE,"w"),n,1000) for _ in range(5)]
    res[scale]=(statistics.median(g), statistics.median(w), None)
    print(f"scale {scale}: log {n} lines (+1,001 appended): re-import {res[scale][0]*1000:.1f} ms, whole import of the same grown log {res[scale][1]*1000:.1f} ms, ratio {res[scale][0]/res[scale][1]:.2f}")
print(f"re-import at 10x / at 1x: {res[10][0]/res[1][0]:.2f}; whole import 10x / 1x: {res[10][1]/res[1][1]:.2f}")
