#!/usr/bin/env bash
# Run `make test` (or one make target, say `unit-3.13`) several times in a row while another process keeps one core
# busy, and say which runs failed and which tests failed in them. A test that fails here on timing alone will fail
# some day in CI, where the machine is shared too: fix it (docs/contributing.md says how), do not rerun it.
#
#   scripts/stress_suite.sh                          # make test, 3 times, one core kept busy
#   scripts/stress_suite.sh --runs 10 unit-3.13      # the suite on CPython 3.13, 10 times
#   scripts/stress_suite.sh --no-burner unit-3.13    # the same without the busy core (a baseline)
#
# Anything after `--` goes to make, e.g. `-- JOBS=1` or `-- PYTHON_VERSIONS="3.10 3.13"`. Each run's output is kept in
# build/stress/STARTED/run-N.log (and, for `make test`, each check's log in run-N-checks/). The busy core is a pure
# CPU loop (`python3 -c 'while True: pass'`), pinned to core 0 when taskset is there; it is stopped when the script
# ends, also on Ctrl-C or a failure. Exit status: 0 if every run passed, else 1.
#
# Everything runs from functions, read whole before main starts: editing this file while it runs cannot change the
# running copy (bash reads a script's top level as it goes).
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

burner_pid=""
make_pid=""

stop_burner() {
    if [[ -n "$burner_pid" ]]; then
        kill "$burner_pid" 2>/dev/null || true
        wait "$burner_pid" 2>/dev/null || true
        burner_pid=""
    fi
}

# On the way out: the burner, and a make still running with everything it started (its own process group).
stop_all() {
    if [[ -n "$make_pid" ]]; then
        kill -TERM -- "-$make_pid" 2>/dev/null || true
        wait "$make_pid" 2>/dev/null || true
        make_pid=""
    fi
    stop_burner
}

# Run make in a process group of its own and wait for it: a signal then reaches the traps at once (bash runs a trap
# only once the foreground command has ended), and stop_all can end the whole run.
run_make() {
    local status=0
    setsid make --no-print-directory "$@" &
    make_pid=$!
    wait "$make_pid" || status=$?
    make_pid=""
    return "$status"
}

start_burner() {
    local pin=()
    if command -v taskset >/dev/null; then
        pin=(taskset -c 0)
    fi
    "${pin[@]}" python3 -c 'while True: pass' &
    burner_pid=$!
    echo "stress: one core kept busy by process $burner_pid (${pin[*]:-not pinned})"
}

# The failed tests of a run's log, one per line as CHECK: FAILED|ERROR test-id. `make test` prints each check's log
# after a line "== CHECK: passed|FAILED ..." (scripts/run_checks.py); a single target's log is that target's.
failed_tests() {
    awk -v check="$2" '
        /^== [^ ]+: (passed|FAILED)/ { check = $2; sub(/:$/, "", check) }
        /^(FAILED|ERROR) / { line = $0; sub(/ - .*/, "", line); print check ": " line }
    ' "$1" | sort -u
}

main() {
    local runs=3 burner=1 target=test
    local make_arguments=()
    while (($#)); do
        case "$1" in
            --runs)
                (($# >= 2)) || { usage >&2; exit 2; }
                runs="$2"
                shift 2
                ;;
            --runs=*) runs="${1#--runs=}"; shift ;;
            --no-burner) burner=0; shift ;;
            -h|--help) usage; exit 0 ;;
            --) shift; make_arguments=("$@"); break ;;
            -*) echo "stress_suite.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
            *) target="$1"; shift ;;
        esac
    done
    if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
        echo "stress_suite.sh: --runs needs a whole number of at least 1, not '$runs'" >&2
        exit 2
    fi

    cd "$(dirname "$0")/.."
    local out
    out=build/stress/$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$out"

    trap stop_all EXIT
    trap 'stop_all; exit 130' INT
    trap 'stop_all; exit 143' TERM
    trap 'stop_all; exit 129' HUP
    if ((burner)); then
        start_burner
    fi

    local run passed=0 log outcome started seconds failure
    local summary=() all_failures=() failures=()
    for ((run = 1; run <= runs; run++)); do
        log="$out/run-$run.log"
        echo "stress: run $run of $runs: make $target ${make_arguments[*]:-}(load $(cut -d' ' -f1-3 /proc/loadavg))"
        started=$(date +%s)
        if run_make "$target" "${make_arguments[@]}" >"$log" 2>&1; then
            outcome=passed
            passed=$((passed + 1))
        else
            outcome=FAILED
        fi
        seconds=$(($(date +%s) - started))
        if [[ "$target" == test && -d build/checks ]]; then
            cp -r build/checks "$out/run-$run-checks"
        fi
        mapfile -t failures < <(failed_tests "$log" "$target")
        summary+=("run $run: $outcome in ${seconds} s, ${#failures[@]} failed test(s)")
        echo "stress: run $run: $outcome in ${seconds} s (log: $log)"
        for failure in "${failures[@]}"; do
            echo "    $failure"
            all_failures+=("$failure")
        done
        if [[ "$outcome" == FAILED && ${#failures[@]} -eq 0 ]]; then
            echo "    no failed test named in the log; its end:"
            tail -n 15 "$log" | sed 's/^/    | /'
        fi
    done
    stop_burner

    echo
    echo "stress: make $target: $passed of $runs runs passed$( ((burner)) && echo ', one core kept busy')"
    printf '  %s\n' "${summary[@]}"
    if ((${#all_failures[@]})); then
        echo "stress: tests that failed at least once (times, check: test):"
        printf '%s\n' "${all_failures[@]}" | sort | uniq -c | sort -rn | sed 's/^/  /'
    fi
    ((passed == runs))
}

main "$@"
exit
