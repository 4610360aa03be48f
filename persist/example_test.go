package persist_test

import (
	"context"
	"time"

	"ai-load-service/persist"
	"ai-load-service/shard"
)

// Example wires a Writer the way main.go does: the Writer is the Set's
// Store, Start begins the snapshot loop, and on shutdown Seal lets the
// admitted requests finish, then Stop writes the last snapshot before the
// shards stop. (Not run: it needs a Redis.)
func Example() {
	w := persist.New(persist.Options{Addrs: []string{"127.0.0.1:6379"}, Interval: time.Second})
	set := shard.New(shard.Options{Store: w})
	w.Start(set)

	// ... serve traffic ...

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if err := set.Seal(ctx); err != nil {
		println("requests still running:", err.Error())
	}
	if rep, err := w.Stop(ctx); err != nil {
		println("devices not written:", rep.Pending, "not reconciled:", rep.Unreconciled)
	}
	set.Stop()
}
