// Ask before destructive form posts (cancel, block, revoke). The forms work without it:
// the server does the same thing either way. Forms or buttons carry data-confirm="question".
document.addEventListener("submit", function (event) {
  var submitter = event.submitter;
  var question = (submitter && submitter.getAttribute("data-confirm")) ||
    event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
