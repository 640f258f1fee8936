package l2

// JoinQueued returns how many peeks wait for the next joined batch of s.
func JoinQueued(s *Store) int {
	s.join.mu.Lock()
	defer s.join.mu.Unlock()
	return len(s.join.queue)
}
