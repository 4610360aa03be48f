# syntax=docker/dockerfile:1
# docker build -t ai-load-service:1.0 .   (--build-arg VERSION=... to stamp another version)

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=1.0
# CI runs this very line (.ci/run): keep it on one line.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ai-load-service .

# No shell, no package manager; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ai-load-service /ai-load-service
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/ai-load-service"]
