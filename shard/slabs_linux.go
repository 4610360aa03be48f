package shard

import "syscall"

// adviseHuge asks for huge pages for b, which starts on a huge-page
// boundary; under transparent_hugepage=madvise nothing else gets them.
// Failure only costs speed.
func adviseHuge(b []byte) { _ = syscall.Madvise(b, syscall.MADV_HUGEPAGE) }
