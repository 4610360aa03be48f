package cluster_test

import (
	"fmt"

	"ai-load-service/server/cluster"
)

func ExampleNew() {
	m, err := cluster.New(cluster.Options{
		Self:   "10.0.0.1:8080",
		Static: []string{"10.0.0.3:8080", "10.0.0.1:8080", "10.0.0.2:8080"},
	})
	if err != nil {
		panic(err)
	}
	m.Start()
	defer m.Stop()

	v := m.View() // once per request
	owner := v.Owner([]byte("dev-1"))
	fmt.Println(v.Members, v.Seq)
	fmt.Println(owner, owner == v.Self)

	m.Leave() // stopping: own nothing from now on
	fmt.Println(m.View().Members, m.View().HasSelf())
	// Output:
	// [10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080] 1
	// 10.0.0.3:8080 false
	// [10.0.0.2:8080 10.0.0.3:8080] false
}

func ExampleView_Rank() {
	old := cluster.NewView("", []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"})
	cur := cluster.NewView("", []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.4:8080"})
	joined, left := cur.Diff(old)
	fmt.Println(joined, left)
	for _, id := range []string{"dev-1", "dev-2", "dev-7"} {
		// After one join, a device that moved was owned by its second
		// in rank: the old owner, where its state still is.
		fmt.Println(id, cur.Rank([]byte(id), 2, nil), old.Owner([]byte(id)))
	}
	// Output:
	// [10.0.0.4:8080] []
	// dev-1 [10.0.0.4:8080 10.0.0.3:8080] 10.0.0.3:8080
	// dev-2 [10.0.0.2:8080 10.0.0.3:8080] 10.0.0.2:8080
	// dev-7 [10.0.0.1:8080 10.0.0.2:8080] 10.0.0.1:8080
}
