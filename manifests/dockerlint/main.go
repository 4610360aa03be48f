// Command dockerlint checks a Dockerfile with BuildKit's own parser and
// linter, the rules `docker build --check` applies at parse time, for a
// machine without a Docker engine (CI). It prints each finding and exits
// 1 if there is any, 2 if the file cannot be parsed.
//
// It is a module of its own so that BuildKit stays out of the service's
// go.mod.
package main

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerlint path/to/Dockerfile")
		os.Exit(2)
	}
	n, err := lint(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "dockerlint:", err)
		os.Exit(2)
	}
	if n > 0 {
		os.Exit(1)
	}
	fmt.Println(os.Args[1] + ": no findings")
}

// lint parses path and returns how many findings it printed.
func lint(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	n := 0
	for _, w := range res.Warnings {
		n++
		fmt.Printf("%s:%d: %s\n", path, w.Location.Start.Line, w.Short)
	}
	l := linter.New(&linter.Config{Warn: func(rule, _, url, msg string, loc []parser.Range) {
		n++
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		fmt.Printf("%s:%d: %s: %s (%s)\n", path, line, rule, msg, url)
	}})
	if _, _, err := instructions.Parse(res.AST, l); err != nil {
		return n, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}
