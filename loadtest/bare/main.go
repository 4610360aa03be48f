// Command bare is the benchmark baseline: a fasthttp server that reads the
// request like the service does and answers every request with a constant
// body. make bench runs it next to the service on the same bodies.
package main

import (
	"flag"
	"log"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "listen address")
	flag.Parse()
	body := []byte(`{"accepted":1,"anomalies":[]}` + "\n")
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("application/json")
			ctx.SetBody(body)
		},
		MaxRequestBodySize: 1 << 20,
		NoDefaultDate:      true,
	}
	log.Fatal(s.ListenAndServe(*addr))
}
