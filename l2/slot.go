package l2

import (
	"strconv"
	"strings"
	"sync"
)

// Slots is the number of Redis Cluster hash slots.
const Slots = 16384

// Slot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) of its
// hash tag, the text between its first '{' and the first '}' after it when
// that text is not empty, or of the whole key, modulo 16384. It is the
// slot CLUSTER KEYSLOT names.
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % Slots)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum
// of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// SlotTag returns a short text whose slot is slot (0 to 16383): the hash tag
// of the keys that a Store on a cluster keeps beside the values of that slot
// (the slot's group clock and group stamps), so that a script on a value
// reaches them on the same node, in the same slot. It is the shortest
// decimal number, counting from 0, whose slot is slot.
func SlotTag(slot int) string {
	slotTagsOnce.Do(func() {
		found := 0
		for i := 0; found < Slots; i++ {
			tag := strconv.Itoa(i)
			if s := crc16(tag) % Slots; slotTags[s] == "" {
				slotTags[s] = tag
				found++
			}
		}
	})
	return slotTags[slot]
}

var (
	slotTagsOnce sync.Once
	slotTags     [Slots]string
)
