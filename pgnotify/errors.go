package pgnotify

import "errors"

var (
	// ErrConfig reports an invalid Config or TriggerConfig: a missing
	// field, a name that cannot be quoted, a duration out of range. New and
	// TriggerSQL return it; a running Listener never does.
	ErrConfig = errors.New("pgnotify: invalid config")
	// ErrPayload reports a notification payload that does not parse or
	// breaks the format's rules (see ParsePayload). The Listener answers
	// such a payload by invalidating every namespace it was configured
	// with, since it cannot know what changed.
	ErrPayload = errors.New("pgnotify: malformed payload")
)
