package install

import (
	"os"
	"syscall"
)

func sysIno(st os.FileInfo) uint64 { return st.Sys().(*syscall.Stat_t).Ino }
