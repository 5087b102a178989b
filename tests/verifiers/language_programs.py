# ruff: noqa: E501  (programs, kept as their lines read)
"""One small problem in every language of the table, written for the tests of each toolchain.

`main` reads a word and acts on it: `sum A B` prints A+B (the problem), `crash` fails at run
time, `loop` never ends, `hog` allocates memory until something stops it. One program for
four behaviours: it is compiled once, and the other items hit the compile cache.
`wrong` prints A+B+1. `broken` does not compile (or parse). `add_ok`/`add_bad` define
`add(a, b)` (right, and wrong), and `test_code` asserts on it in the language's own way.
"""

from __future__ import annotations

PROGRAMS: dict[str, dict[str, str]] = {
    "python": {
        "main": """import sys
w = sys.stdin.read().split()
if w[0] == "sum":
    print(int(w[1]) + int(w[2]))
elif w[0] == "crash":
    print([1][5])
elif w[0] == "loop":
    while True:
        pass
else:
    x = []
    while True:
        x.append(bytearray(1 << 20))
""",
        "wrong": "a, b = map(int, input().split()[1:])\nprint(a + b + 1)\n",
        "broken": "print((1 + 2)\n",
        "add_ok": "def add(a, b):\n    return a + b\n",
        "add_bad": "def add(a, b):\n    return a - b\n",
        "test_code": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n",
    },
    "c": {
        "main": r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    char w[16]; long a, b;
    if (scanf("%15s", w) != 1) return 2;
    if (!strcmp(w, "sum")) { scanf("%ld %ld", &a, &b); printf("%ld\n", a + b); }
    else if (!strcmp(w, "crash")) { int *p = NULL; *p = 1; }
    else if (!strcmp(w, "loop")) { volatile long i = 0; for (;;) i++; }
    else { for (;;) { char *p = malloc(1 << 20); if (!p) abort(); memset(p, 1, 1 << 20); } }
    return 0;
}
""",
        "wrong": '#include <stdio.h>\nint main(void) { long a, b; scanf("%*s %ld %ld", &a, &b);'
        ' printf("%ld\\n", a + b + 1); return 0; }\n',
        "broken": "int main(void) { return 0 }\n",
        "add_ok": "int add(int a, int b) { return a + b; }\n",
        "add_bad": "int add(int a, int b) { return a - b; }\n",
        "test_code": "#include <assert.h>\nint main(void) {\n    assert(add(2, 3) == 5);\n"
        "    assert(add(-1, 1) == 0);\n    return 0;\n}\n",
    },
    "cpp": {
        "main": r"""#include <iostream>
#include <string>
#include <vector>
int main() {
    std::string w; std::cin >> w;
    if (w == "sum") { long a, b; std::cin >> a >> b; std::cout << a + b << "\n"; }
    else if (w == "crash") { std::vector<int> v; return v.at(5); }
    else if (w == "loop") { volatile long i = 0; for (;;) i++; }
    else { std::vector<std::vector<char>> x; for (;;) x.emplace_back(1 << 20, 1); }
}
""",
        "wrong": "#include <iostream>\n#include <string>\nint main() { std::string w; long a, b;"
        ' std::cin >> w >> a >> b; std::cout << a + b + 1 << "\\n"; }\n',
        "broken": "#include <iostream>\nint main() {\n    std::cout << undefined_name;\n}\n",
        "add_ok": "int add(int a, int b) { return a + b; }\n",
        "add_bad": "int add(int a, int b) { return a - b; }\n",
        "test_code": "#include <cassert>\nint main() {\n    auto candidate = add;\n"
        "    assert(candidate(2, 3) == 5);\n    assert(candidate(-1, 1) == 0);\n}\n",
    },
    "java": {
        "main": """import java.util.*;
public class Solution {
    public static void main(String[] args) {
        Scanner s = new Scanner(System.in);
        String w = s.next();
        if (w.equals("sum")) System.out.println(s.nextLong() + s.nextLong());
        else if (w.equals("crash")) System.out.println(new int[1][0] + args[5]);
        else if (w.equals("loop")) { long i = 0; while (true) i++; }
        else { List<long[]> x = new ArrayList<>(); while (true) x.add(new long[1 << 17]); }
    }
}
""",
        "wrong": "import java.util.*;\nclass Main {\n    public static void main(String[] a) {\n"
        "        Scanner s = new Scanner(System.in); s.next();\n"
        "        System.out.println(s.nextLong() + s.nextLong() + 1);\n    }\n}\n",
        "broken": "public class Main {\n    public static void main(String[] a) {\n"
        '        int x = "text";\n    }\n}\n',
        "add_ok": "class Problem {\n    static int add(int a, int b) { return a + b; }\n",
        "add_bad": "class Problem {\n    static int add(int a, int b) { return a - b; }\n",
        "test_code": "    public static void main(String[] args) {\n        assert(add(2, 3) == 5);\n"
        "        assert(add(-1, 1) == 0);\n    }\n}\n",
    },
    "javascript": {
        "main": """const w = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/);
if (w[0] === 'sum') console.log(Number(w[1]) + Number(w[2]));
else if (w[0] === 'crash') null.field;
else if (w[0] === 'loop') { for (;;) {} }
else { const x = []; for (;;) x.push(new Array(1 << 17).fill(1.5)); }
""",
        "wrong": "const w = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/);\n"
        "console.log(Number(w[1]) + Number(w[2]) + 1);\n",
        "broken": "function f( {\n",
        "add_ok": "function add(a, b) {\n  return a + b;\n}\n",
        "add_bad": "function add(a, b) {\n  return a - b;\n}\n",
        "test_code": "const assert = require('node:assert');\nassert.deepEqual(add(2, 3), 5);\n"
        "assert.deepEqual(add(-1, 1), 0);\n",
    },
    "typescript": {
        "main": """const w: string[] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/);
if (w[0] === 'sum') console.log(Number(w[1]) + Number(w[2]));
else if (w[0] === 'crash') { const o: any = null; console.log(o.field); }
else if (w[0] === 'loop') { for (;;) {} }
else { const x: number[][] = []; for (;;) x.push(new Array(1 << 17).fill(1.5)); }
""",
        "wrong": "const w: string[] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/);\n"
        "console.log(Number(w[1]) + Number(w[2]) + 1);\n",
        "broken": "const x: number = 'text';\nconsole.log(x);\n",
        "add_ok": "function add(a: number, b: number): number {\n  return a + b;\n}\n",
        "add_bad": "function add(a: number, b: number): number {\n  return a - b;\n}\n",
        "test_code": "declare var require: any;\nconst assert = require('node:assert');\n"
        "assert.deepEqual(add(2, 3), 5);\nassert.deepEqual(add(-1, 1), 0);\n",
    },
    "rust": {
        "main": """use std::io::Read;
fn main() {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).unwrap();
    let w: Vec<&str> = s.split_whitespace().collect();
    match w[0] {
        "sum" => println!("{}", w[1].parse::<i64>().unwrap() + w[2].parse::<i64>().unwrap()),
        "crash" => println!("{}", w[99]),
        "loop" => { let mut i: u64 = 0; loop { i = i.wrapping_add(1); if i == u64::MAX { println!("{}", i); } } }
        _ => { let mut x: Vec<Vec<u8>> = Vec::new(); loop { x.push(vec![1; 1 << 20]); } }
    }
}
""",
        "wrong": "use std::io::Read;\nfn main() {\n    let mut s = String::new();\n"
        "    std::io::stdin().read_to_string(&mut s).unwrap();\n"
        "    let w: Vec<i64> = s.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();\n"
        '    println!("{}", w[0] + w[1] + 1);\n}\n',
        "broken": 'fn main() {\n    let x: i32 = "text";\n}\n',
        "add_ok": "fn add(a: i64, b: i64) -> i64 {\n    a + b\n}\n",
        "add_bad": "fn add(a: i64, b: i64) -> i64 {\n    a - b\n}\n",
        "test_code": "fn main() {\n    let candidate = add;\n    assert_eq!(candidate(2, 3), 5);\n"
        "    assert_eq!(candidate(-1, 1), 0);\n}\n",
    },
    "go": {
        "main": """package main

import "fmt"

func main() {
	var w string
	fmt.Scan(&w)
	switch w {
	case "sum":
		var a, b int64
		fmt.Scan(&a, &b)
		fmt.Println(a + b)
	case "crash":
		var s []int
		fmt.Println(s[5])
	case "loop":
		i := 0
		for {
			i++
		}
	default:
		var x [][]byte
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = 1
			}
			x = append(x, b)
		}
	}
}
""",
        "wrong": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tvar w string\n\tvar a, b int64\n'
        "\tfmt.Scan(&w, &a, &b)\n\tfmt.Println(a + b + 1)\n}\n",
        "broken": 'package main\n\nfunc main() {\n\tvar x int = "text"\n}\n',
        "add_ok": "package main\n\nfunc add(a int, b int) int {\n\treturn a + b\n}\n",
        "add_bad": "package main\n\nfunc add(a int, b int) int {\n\treturn a - b\n}\n",
        "test_code": "func main() {\n\tcandidate := add\n"
        '\tif candidate(2, 3) != 5 {\n\t\tpanic("add(2, 3)")\n\t}\n'
        '\tif candidate(-1, 1) != 0 {\n\t\tpanic("add(-1, 1)")\n\t}\n}\n',
    },
    "bash": {
        "main": """read w a b
case "$w" in
  sum) echo $((a + b)) ;;
  crash) exit 3 ;;
  loop) while :; do :; done ;;
  *) x=a; while :; do x="$x$x"; done ;;
esac
""",
        "wrong": "read w a b\necho $((a + b + 1))\n",
        "broken": "if then fi (\n",
        "add_ok": "add() {\n  echo $(($1 + $2))\n}\n",
        "add_bad": "add() {\n  echo $(($1 - $2))\n}\n",
        "test_code": '[ "$(add 2 3)" = 5 ] || exit 1\n[ "$(add -1 1)" = 0 ] || exit 1\n',
    },
    "ruby": {
        "main": """w = $stdin.read.split
case w[0]
when "sum" then puts w[1].to_i + w[2].to_i
when "crash" then raise "boom"
when "loop" then loop {}
else x = []; loop { x << ("a" * (1 << 20)) }
end
""",
        "wrong": "w = gets.split\nputs w[1].to_i + w[2].to_i + 1\n",
        "broken": "def f(\n  puts 1\n",
        "add_ok": "def add(a, b)\n  a + b\nend\n",
        "add_bad": "def add(a, b)\n  a - b\nend\n",
        "test_code": "raise 'add(2, 3)' unless add(2, 3) == 5\nraise 'add(-1, 1)' unless add(-1, 1) == 0\n",
    },
    "php": {
        "main": """<?php
$w = preg_split('/\\s+/', trim(stream_get_contents(STDIN)));
if ($w[0] === 'sum') { echo intval($w[1]) + intval($w[2]), PHP_EOL; }
elseif ($w[0] === 'crash') { throw new Exception('boom'); }
elseif ($w[0] === 'loop') { while (true) {} }
else { $x = []; while (true) { $x[] = str_repeat('a', 1 << 20); } }
""",
        "wrong": "<?php\n$w = preg_split('/\\s+/', trim(fgets(STDIN)));\n"
        "echo intval($w[1]) + intval($w[2]) + 1, PHP_EOL;\n",
        "broken": "<?php\nfunction f( {\n",
        "add_ok": "<?php\nfunction add($a, $b) {\n  return $a + $b;\n}\n",
        "add_bad": "<?php\nfunction add($a, $b) {\n  return $a - $b;\n}\n",
        "test_code": "assert(add(2, 3) == 5);\nassert(add(-1, 1) == 0);\n",
    },
    "perl": {
        "main": """my @w = split ' ', join('', <STDIN>);
if ($w[0] eq 'sum') { print $w[1] + $w[2], "\\n"; }
elsif ($w[0] eq 'crash') { die "boom\\n"; }
elsif ($w[0] eq 'loop') { 1 while 1; }
else { my @x; push @x, 'a' x (1 << 20) while 1; }
""",
        "wrong": "my @w = split ' ', <STDIN>;\nprint $w[1] + $w[2] + 1, \"\\n\";\n",
        "broken": "sub f {\n",
        "add_ok": "sub add {\n  my ($a, $b) = @_;\n  return $a + $b;\n}\n",
        "add_bad": "sub add {\n  my ($a, $b) = @_;\n  return $a - $b;\n}\n",
        "test_code": "die 'add(2, 3)' unless add(2, 3) == 5;\ndie 'add(-1, 1)' unless add(-1, 1) == 0;\n",
    },
    "lua": {
        "main": """local w = io.read('l')
local words = {}
for x in w:gmatch('%S+') do words[#words + 1] = x end
if words[1] == 'sum' then print(math.tointeger(tonumber(words[2]) + tonumber(words[3])))
elseif words[1] == 'crash' then error('boom')
elseif words[1] == 'loop' then while true do end
else local x = {} while true do x[#x + 1] = string.rep('a', 1 << 20) .. #x end end
""",
        "wrong": "local _, a, b = io.read('l'):match('(%S+)%s+(%S+)%s+(%S+)')\n"
        "print(math.tointeger(tonumber(a) + tonumber(b) + 1))\n",
        "broken": "function f(\n",
        "add_ok": "local function add(a, b)\n  return a + b\nend\n",
        "add_bad": "local function add(a, b)\n  return a - b\nend\n",
        "test_code": "assert(add(2, 3) == 5)\nassert(add(-1, 1) == 0)\n",
    },
    "r": {
        "main": """w <- scan(file('stdin'), what = character(), quiet = TRUE)
if (w[1] == 'sum') {
  cat(as.numeric(w[2]) + as.numeric(w[3]), '\\n')
} else if (w[1] == 'crash') {
  stop('boom')
} else if (w[1] == 'loop') {
  repeat {}
} else {
  x <- list()
  repeat x[[length(x) + 1]] <- runif(1e6)
}
""",
        "wrong": "w <- scan(file('stdin'), what = character(), quiet = TRUE)\n"
        "cat(as.numeric(w[2]) + as.numeric(w[3]) + 1, '\\n')\n",
        "broken": "f <- function( {\n",
        "add_ok": "add <- function(a, b) {\n  a + b\n}\n",
        "add_bad": "add <- function(a, b) {\n  a - b\n}\n",
        "test_code": "stopifnot(isTRUE(all.equal(add(2, 3), 5)))\n"
        "stopifnot(isTRUE(all.equal(add(-1, 1), 0)))\n",
    },
    "ocaml": {
        "main": """let () =
  match Scanf.scanf " %s" (fun w -> w) with
  | "sum" -> Scanf.scanf " %d %d" (fun a b -> Printf.printf "%d\\n" (a + b))
  | "crash" -> print_int (List.nth [] 5)
  | "loop" -> let r = ref 0 in while true do incr r done
  | _ -> let x = ref [] in while true do x := Bytes.make (1 lsl 20) 'a' :: !x done
""",
        "wrong": 'let () = Scanf.scanf " %s %d %d" (fun _ a b -> Printf.printf "%d\\n" (a + b + 1))\n',
        "broken": 'let () = print_int "text"\n',
        "add_ok": "let add a b = a + b\n",
        "add_bad": "let add a b = a - b\n",
        "test_code": "let () =\n  assert (add 2 3 = 5);\n  assert (add (-1) 1 = 0)\n",
    },
    "fortran": {
        "main": """program main
  implicit none
  character(len=64) :: line, w
  integer(8) :: a, b, i
  integer, allocatable :: arr(:)
  type :: chunk
    integer, allocatable :: v(:)
  end type
  type(chunk), allocatable :: x(:), tmp(:)
  read(*, '(A)') line
  read(line, *) w
  if (trim(w) == 'sum') then
    read(line, *) w, a, b
    print '(I0)', a + b
  else if (trim(w) == 'crash') then
    error stop 3
  else if (trim(w) == 'loop') then
    i = 0
    do
      i = i + 1
      if (i < 0) print *, i
    end do
  else
    allocate(x(0))
    do
      allocate(arr(262144))
      arr = 1
      allocate(tmp(size(x) + 1))
      tmp(1:size(x)) = x
      call move_alloc(arr, tmp(size(tmp))%v)
      call move_alloc(tmp, x)
    end do
  end if
end program main
""",
        "wrong": "program main\n  character(len=16) :: w\n  integer(8) :: a, b\n"
        "  read(*, *) w, a, b\n  print '(I0)', a + b + 1\nend program main\n",
        "broken": "program main\n  integer :: x\n  x = 'text'\nend program main\n",
        "add_ok": "module m\ncontains\n  integer function add(a, b)\n    integer :: a, b\n"
        "    add = a + b\n  end function\nend module m\n",
        "add_bad": "module m\ncontains\n  integer function add(a, b)\n    integer :: a, b\n"
        "    add = a - b\n  end function\nend module m\n",
        "test_code": "program test\n  use m\n  if (add(2, 3) /= 5) error stop 1\n"
        "  if (add(-1, 1) /= 0) error stop 1\nend program test\n",
    },
    "haskell": {
        "main": """import qualified Data.Map as M
main :: IO ()
main = do
  w <- words <$> getContents
  case w of
    ("sum" : a : b : _) -> print (read a + read b :: Integer)
    ("crash" : _) -> print (head ([] :: [Int]))
    ("loop" : _) -> print (spin 0)
    _ -> print (M.size (M.fromList [(i, i) | i <- [1 :: Int ..]]))

-- A loop in constant space (`length [1 ..]` holds its list where the optimiser is off).
spin :: Int -> Int
spin n = n `seq` spin (n + 1)
""",
        "wrong": "main :: IO ()\nmain = do\n  (_ : a : b : _) <- words <$> getContents\n"
        "  print (read a + read b + 1 :: Integer)\n",
        "broken": "main :: IO ()\nmain = putStrLn (1 :: Int)\n",
        "add_ok": "add :: Int -> Int -> Int\nadd a b = a + b\n",
        "add_bad": "add :: Int -> Int -> Int\nadd a b = a - b\n",
        "test_code": "main :: IO ()\nmain = do\n  let candidate = add\n"
        '  if candidate 2 3 == 5 then pure () else error "add 2 3"\n'
        '  if candidate (-1) 1 == 0 then pure () else error "add -1 1"\n',
    },
    "csharp": {
        "main": """using System;
using System.Collections.Generic;
class Program {
    static void Main() {
        var w = Console.In.ReadToEnd().Split((char[])null, StringSplitOptions.RemoveEmptyEntries);
        if (w[0] == "sum") Console.WriteLine(long.Parse(w[1]) + long.Parse(w[2]));
        else if (w[0] == "crash") { var a = new int[1]; Console.WriteLine(a[w.Length + 5]); }
        else if (w[0] == "loop") { long i = 0; while (true) i++; }
        else { var x = new List<byte[]>(); while (true) { var b = new byte[1 << 20];
            for (int i = 0; i < b.Length; i += 4096) b[i] = 1; x.Add(b); } }
    }
}
""",
        "wrong": "using System;\nclass Program {\n    static void Main() {\n"
        "        var w = Console.ReadLine().Split(' ');\n"
        "        Console.WriteLine(long.Parse(w[1]) + long.Parse(w[2]) + 1);\n    }\n}\n",
        "broken": 'class Program {\n    static void Main() {\n        int x = "text";\n    }\n}\n',
        "add_ok": "using System;\nclass Problem {\n    static int add(int a, int b) { return a + b; }\n",
        "add_bad": "using System;\nclass Problem {\n    static int add(int a, int b) { return a - b; }\n",
        "test_code": "    static void Main() {\n"
        '        if (add(2, 3) != 5) throw new Exception("Assertion failed: add(2, 3)");\n'
        '        if (add(-1, 1) != 0) throw new Exception("Assertion failed: add(-1, 1)");\n'
        "    }\n}\n",
    },
    "d": {
        "main": """import std.stdio, std.string, std.conv;
void main() {
    auto w = stdin.readln().split();
    if (w[0] == "sum") writeln(to!long(w[1]) + to!long(w[2]));
    else if (w[0] == "crash") { int[] a; writeln(a[5]); }
    else if (w[0] == "loop") { long i = 0; while (true) { i++; } }
    else { ubyte[][] x; while (true) { auto b = new ubyte[1 << 20]; b[] = 1; x ~= b; } }
}
""",
        "wrong": "import std.stdio, std.string, std.conv;\nvoid main() {\n"
        "    auto w = stdin.readln().split();\n    writeln(to!long(w[1]) + to!long(w[2]) + 1);\n}\n",
        "broken": 'void main() {\n    int x = "text";\n}\n',
        "add_ok": "int add(int a, int b) {\n    return a + b;\n}\n",
        "add_bad": "int add(int a, int b) {\n    return a - b;\n}\n",
        "test_code": "void main() {\n    auto candidate = &add;\n    assert(candidate(2, 3) == 5);\n"
        "    assert(candidate(-1, 1) == 0);\n}\n",
    },
    "scala": {
        "main": """object Main {
  def main(args: Array[String]): Unit = {
    val w = scala.io.Source.stdin.mkString.trim.split("\\\\s+")
    w(0) match {
      case "sum" => println(w(1).toLong + w(2).toLong)
      case "crash" => println(w(99))
      case "loop" => { var i = 0L; while (true) i += 1 }
      case _ => { val x = scala.collection.mutable.ArrayBuffer[Array[Long]](); while (true) x += new Array[Long](1 << 17) }
    }
  }
}
""",
        "wrong": "object Main {\n  def main(args: Array[String]): Unit = {\n"
        '    val w = scala.io.StdIn.readLine().trim.split(" ")\n'
        "    println(w(1).toLong + w(2).toLong + 1)\n  }\n}\n",
        "broken": "object Main {\n  def main(args: Array[String]): Unit = {\n"
        '    val x: Int = "text"\n  }\n}\n',
        "add_ok": "object Problem {\n  def add(a: Int, b: Int): Int = a + b\n",
        "add_bad": "object Problem {\n  def add(a: Int, b: Int): Int = a - b\n",
        "test_code": "  def main(args: Array[String]): Unit = {\n    assert(add(2, 3) == 5)\n"
        "    assert(add(-1, 1) == 0)\n  }\n}\n",
    },
    "racket": {
        "main": """#lang racket
(define w (read))
(cond
  [(eq? w 'sum) (displayln (+ (read) (read)))]
  [(eq? w 'crash) (displayln (car '()))]
  [(eq? w 'loop) (let loop () (loop))]
  [else (let loop ([x '()]) (loop (cons (make-bytes (expt 2 20) 1) x)))])
""",
        "wrong": "#lang racket\n(read)\n(displayln (+ (read) (read) 1))\n",
        "broken": "#lang racket\n(define (f x)\n",
        "add_ok": "#lang racket\n(define (add a b) (+ a b))\n",
        "add_bad": "#lang racket\n(define (add a b) (- a b))\n",
        "test_code": "(require rackunit)\n(define (test-humaneval)\n  (let ((candidate add))\n"
        "    (check-equal? (candidate 2 3) 5)\n    (check-equal? (candidate -1 1) 0)))\n"
        "(test-humaneval)\n",
    },
    "nim": {
        "main": """import strutils
let w = stdin.readAll().splitWhitespace()
if w[0] == "sum": echo parseInt(w[1]) + parseInt(w[2])
elif w[0] == "crash": echo w[99]
elif w[0] == "loop":
  var i = 0
  while true: i = i + 1
else:
  var x: seq[string]
  while true: x.add(repeat('a', 1 shl 20))
""",
        "wrong": "import strutils\nlet w = stdin.readLine().splitWhitespace()\n"
        "echo parseInt(w[1]) + parseInt(w[2]) + 1\n",
        "broken": 'let x: int = "text"\n',
        "add_ok": "proc add(a, b: int): int =\n  a + b\n",
        "add_bad": "proc add(a, b: int): int =\n  a - b\n",
        "test_code": "doAssert add(2, 3) == 5\ndoAssert add(-1, 1) == 0\n",
    },
}
