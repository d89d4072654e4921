package record

import "context"

// WriterCacheSize is the cache_size pragma of the connection recordings
// are written on (negative: KiB).
func WriterCacheSize(s *Store) (int, error) {
	var n int
	err := s.writer.QueryRowContext(context.Background(), "PRAGMA cache_size").Scan(&n)
	return n, err
}
