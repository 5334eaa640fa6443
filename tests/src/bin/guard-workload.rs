//! Workloads with exact, countable behaviour for guard's integration tests
//! and benchmarks. Each prints one JSON line with what it did.
//!
//!   forks N              fork N children that _exit(0) at once; wait for each
//!   spawn N PROG ARGS..  fork N children that exec PROG ARGS; wait for each
//!   threads N            start N threads, each sleeping 20 ms; join them
//!   threadbomb           print a line; every thread starts two more, then
//!                        sleeps (a thread bomb, until pids.max refuses)
//!   leak MS              print a line, then every MS ms fork a helper
//!                        that sleeps for ever (a server leaking helpers);
//!                        a failed fork is counted and retried at the next
//!                        tick, and the server goes on
//!   forkbomb             print a line; every process forks as fast as it
//!                        can, for ever, and so does every child; a failed
//!                        fork is retried after 1 ms (a bomb that keeps
//!                        trying, as perl's `fork while fork` does)
//!   alloc MIB [SECS]     allocate and touch MIB MiB, then hold it SECS
//!   grow RATE MIB [SECS] print a line, then allocate and touch MIB MiB at
//!                        RATE MiB/s (0: as fast as it can), then hold it
//!   service MS           print a line, then fork a child that _exits every
//!                        MS ms, forever; a failed fork is retried at the
//!                        next tick (as a service would), never fatal
//!   rename HEX           set comm to the bytes HEX (prctl PR_SET_NAME, at
//!                        most 15), then fork a child that _exits; wait
//!   exit CODE            exit with CODE
//!   fail CODE MS         run for MS milliseconds, then exit with CODE
//!   sleep SECS           sleep
//!   pingpong N           two processes pinned to CPU 0 bounce a byte
//!                        through two pipes N times (2 context switches
//!                        per round trip); prints round trips per second
//!   vfork SECS           vfork a child that sleeps SECS, then _exits: the
//!                        parent waits meanwhile in TASK_KILLABLE (D state)

use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage(&format!("missing or bad {what}")))
}

fn usage(why: &str) -> ! {
    eprintln!(
        "guard-workload: {why}\nusage: guard-workload forks N | spawn N PROG [ARGS..] | threads N | threadbomb | leak MS | forkbomb | alloc MIB [SECS] | grow RATE MIB [SECS] | service MS | rename HEX | exit CODE | fail CODE MS | sleep SECS | pingpong N | vfork SECS | churn N MS"
    );
    std::process::exit(2)
}

fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    status
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pid = std::process::id();
    let started = Instant::now();
    match args.get(1).map(String::as_str) {
        Some("forks") => {
            let n: u64 = arg(&args, 2, "N");
            let mut done = 0u64;
            for _ in 0..n {
                // SAFETY: fork has no memory preconditions; see the child arm.
                match unsafe { libc::fork() } {
                    // SAFETY: the child only calls _exit, async-signal-safe.
                    0 => unsafe { libc::_exit(0) },
                    child if child > 0 => {
                        wait_child(child);
                        done += 1;
                    }
                    _ => break,
                }
            }
            let elapsed = started.elapsed();
            println!(
                "{{\"pid\":{pid},\"forks\":{done},\"elapsed_ns\":{},\"per_sec\":{:.1}}}",
                elapsed.as_nanos(),
                done as f64 / elapsed.as_secs_f64()
            );
        }
        Some("spawn") => {
            let n: u64 = arg(&args, 2, "N");
            let program = args.get(3).unwrap_or_else(|| usage("missing PROG"));
            let c_args: Vec<std::ffi::CString> = args[3..]
                .iter()
                .map(|a| std::ffi::CString::new(a.as_str()).expect("no NUL"))
                .collect();
            let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            let mut children = Vec::new();
            for _ in 0..n {
                // SAFETY: fork has no memory preconditions; see the child arm.
                match unsafe { libc::fork() } {
                    // SAFETY: the child only calls execv and _exit on memory
                    // prepared before fork.
                    0 => unsafe {
                        libc::execv(argv[0], argv.as_ptr());
                        libc::_exit(127)
                    },
                    child if child > 0 => {
                        let status = wait_child(child);
                        children.push(format!("{{\"pid\":{child},\"status\":{status}}}"));
                    }
                    _ => break,
                }
            }
            println!(
                "{{\"pid\":{pid},\"program\":{program:?},\"children\":[{}]}}",
                children.join(",")
            );
        }
        Some("threads") => {
            let n: usize = arg(&args, 2, "N");
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(20));
                        // SAFETY: gettid has no preconditions.
                        unsafe { libc::gettid() }
                    })
                })
                .collect();
            let tids: Vec<String> = handles
                .into_iter()
                .filter_map(|h| h.join().ok())
                .map(|t| t.to_string())
                .collect();
            println!("{{\"pid\":{pid},\"tids\":[{}]}}", tids.join(","));
        }
        Some("threadbomb") => {
            // Every thread starts two more, then sleeps: the process's task
            // count doubles until thread creation fails (pids.max).
            fn spawn_two() {
                for _ in 0..2 {
                    let _ = std::thread::Builder::new().stack_size(64 << 10).spawn(|| {
                        spawn_two();
                        std::thread::sleep(Duration::from_secs(3600));
                    });
                }
            }
            println!("{{\"pid\":{pid}}}");
            spawn_two();
            std::thread::sleep(Duration::from_secs(3600));
        }
        Some("leak") => {
            let ms: u64 = arg(&args, 2, "MS");
            println!("{{\"pid\":{pid}}}");
            loop {
                // SAFETY: the child only sleeps. A refused fork (-1) is
                // retried at the next tick: the server keeps serving with
                // the helpers it has.
                if unsafe { libc::fork() } == 0 {
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        Some("forkbomb") => {
            println!("{{\"pid\":{pid}}}");
            loop {
                // SAFETY: the child only loops on fork and sleep, which
                // need no state the fork could have left inconsistent.
                if unsafe { libc::fork() } < 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Some("alloc") => {
            let mib: usize = arg(&args, 2, "MIB");
            let hold: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib {
                let mut block = vec![0u8; 1 << 20];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                blocks.push(block);
            }
            println!("{{\"pid\":{pid},\"allocated_mib\":{}}}", blocks.len());
            std::thread::sleep(Duration::from_secs(hold));
            std::hint::black_box(&blocks);
        }
        Some("grow") => {
            let rate: f64 = arg(&args, 2, "RATE");
            let mib: usize = arg(&args, 3, "MIB");
            let hold: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0);
            println!("{{\"pid\":{pid}}}");
            let started = Instant::now();
            let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(mib);
            for i in 0..mib {
                let mut block = vec![0u8; 1 << 20];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                blocks.push(block);
                if rate > 0.0 {
                    let due = Duration::from_secs_f64((i + 1) as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            println!(
                "{{\"pid\":{pid},\"allocated_mib\":{},\"elapsed_ns\":{}}}",
                blocks.len(),
                started.elapsed().as_nanos()
            );
            std::thread::sleep(Duration::from_secs(hold));
            std::hint::black_box(&blocks);
        }
        Some("service") => {
            let ms: u64 = arg(&args, 2, "MS");
            println!("{{\"pid\":{pid}}}");
            loop {
                // SAFETY: fork has no memory preconditions; the child only
                // calls _exit.
                match unsafe { libc::fork() } {
                    // SAFETY: async-signal-safe exit of the child.
                    0 => unsafe { libc::_exit(0) },
                    child if child > 0 => {
                        wait_child(child);
                    }
                    _ => eprintln!("fork: {}", std::io::Error::last_os_error()),
                }
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        Some("rename") => {
            let hex: String = arg(&args, 2, "HEX");
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|_| usage("HEX is not hex"));
            let mut name = [0u8; 16];
            let len = bytes.len().min(15);
            name[..len].copy_from_slice(&bytes[..len]);
            // SAFETY: PR_SET_NAME reads 16 bytes from a buffer we own.
            if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
                usage("prctl(PR_SET_NAME) failed");
            }
            // SAFETY: fork has no memory preconditions; see the child arm.
            let child = match unsafe { libc::fork() } {
                // SAFETY: the child only calls _exit, async-signal-safe.
                0 => unsafe { libc::_exit(0) },
                child => child,
            };
            wait_child(child);
            println!("{{\"pid\":{pid},\"child\":{child}}}");
        }
        Some("exit") => {
            let code: i32 = arg(&args, 2, "CODE");
            std::process::exit(code);
        }
        Some("fail") => {
            let code: i32 = arg(&args, 2, "CODE");
            let ms: u64 = arg(&args, 3, "MS");
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(code);
        }
        Some("sleep") => {
            let secs: f64 = arg(&args, 2, "SECS");
            println!("{{\"pid\":{pid}}}");
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
        Some("churn") => {
            // N children that exit at once, reaped, every MS, for ever: a
            // busy host's background of short processes.
            let n: u64 = arg(&args, 2, "N");
            let ms: u64 = arg(&args, 3, "MS");
            println!("{{\"pid\":{pid}}}");
            loop {
                let mut children = Vec::new();
                for _ in 0..n {
                    // SAFETY: fork has no memory preconditions; the child
                    // only calls _exit.
                    match unsafe { libc::fork() } {
                        // SAFETY: async-signal-safe exit of the child.
                        0 => unsafe { libc::_exit(0) },
                        child if child > 0 => children.push(child),
                        _ => break,
                    }
                }
                for child in children {
                    wait_child(child);
                }
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        Some("pingpong") => {
            let n: u64 = arg(&args, 2, "N");
            let elapsed = ping_pong(n);
            println!(
                "{{\"pid\":{pid},\"round_trips\":{n},\"elapsed_ns\":{},\"per_sec\":{:.1}}}",
                elapsed.as_nanos(),
                n as f64 / elapsed.as_secs_f64()
            );
        }
        Some("vfork") => {
            let secs: u32 = arg(&args, 2, "SECS");
            println!("{{\"pid\":{pid}}}");
            vfork_and_sleep(secs);
        }
        _ => usage("unknown workload"),
    }
}

/// The child of `vfork_and_sleep`: sleeps, then leaves without returning
/// (it runs on its own small stack, in the parent's memory).
extern "C" fn vfork_child(arg: *mut libc::c_void) -> libc::c_int {
    let secs = arg as usize as libc::c_uint;
    // SAFETY: sleep and _exit are async-signal-safe and touch no shared
    // state; the child never returns into the parent's frames.
    unsafe {
        libc::sleep(secs);
        libc::_exit(0)
    }
}

/// clone(CLONE_VM | CLONE_VFORK): the parent sleeps in wait_for_vfork_done
/// (TASK_KILLABLE) until the child exits.
fn vfork_and_sleep(secs: u32) {
    let mut stack = vec![0u8; 64 << 10];
    // SAFETY: the stack is ours and outlives the child (the parent is
    // suspended until the child exits); the child only calls sleep/_exit.
    let child = unsafe {
        libc::clone(
            vfork_child,
            stack.as_mut_ptr().add(stack.len()).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            secs as usize as *mut libc::c_void,
        )
    };
    if child < 0 {
        eprintln!("clone: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    wait_child(child);
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity only touch `set`, which outlives the calls.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pipe() -> [libc::c_int; 2] {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("pipe: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    fds
}

/// Reads one byte from `from` and writes it to `to`, `n` times (the child
/// side), or writes then reads (`first_write`).
fn bounce(from: libc::c_int, to: libc::c_int, n: u64, first_write: bool) {
    let mut byte = [0u8; 1];
    for _ in 0..n {
        // SAFETY: one-byte reads and writes into a local buffer on pipe
        // fds this process owns.
        unsafe {
            if first_write {
                libc::write(to, byte.as_ptr().cast(), 1);
                libc::read(from, byte.as_mut_ptr().cast(), 1);
            } else {
                libc::read(from, byte.as_mut_ptr().cast(), 1);
                libc::write(to, byte.as_ptr().cast(), 1);
            }
        }
    }
}

/// Two processes on one CPU: every round trip is two context switches.
fn ping_pong(n: u64) -> Duration {
    pin_to_cpu0();
    let (ping, pong) = (pipe(), pipe());
    // SAFETY: fork has no memory preconditions; the child only bounces
    // bytes and _exits.
    match unsafe { libc::fork() } {
        0 => {
            bounce(ping[0], pong[1], n, false);
            // SAFETY: async-signal-safe exit of the child.
            unsafe { libc::_exit(0) }
        }
        child if child > 0 => {
            let started = Instant::now();
            bounce(pong[0], ping[1], n, true);
            let elapsed = started.elapsed();
            wait_child(child);
            elapsed
        }
        _ => {
            eprintln!("fork: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
    }
}
